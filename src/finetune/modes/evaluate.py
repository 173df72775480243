"""mode=evaluate: score a fine-tuned model on every eval split of the task, without training.

A language-modelling task also accepts a pretrained LM as it is (perplexity before any training),
and continues its sample prompts into samples.jsonl.
"""

from __future__ import annotations

import logging

from finetune.generation import sample_hooks
from finetune.modes.outcome import Outcome, split_lines
from finetune.setup import setup
from finetune.training.batching import build_eval_loader
from finetune.training.evaluation import evaluate_split

log = logging.getLogger("finetune")


def eval_loaders(ctx, datasets: dict) -> dict:
    """The loaders training evaluates with (same batch size and order), sharded over processes."""
    cfg, accelerator = ctx.cfg, ctx.accelerator
    on_cuda = accelerator.device.type == "cuda"
    return {
        split: accelerator.prepare(build_eval_loader(cfg.trainer, features, ctx.tokenizer, ctx.data.input_format,
                                                     cfg.task.max_length, cfg.seed, pin_memory=on_cuda, on_cuda=on_cuda))
        for split, features in datasets.items()
    }


def run(cfg) -> Outcome:
    task = cfg.task
    ctx = setup(cfg, train_split=None, eval_splits=list(task.eval_splits), trained=True)
    model = ctx.model.to(ctx.accelerator.device)
    results = {
        split: evaluate_split(ctx.accelerator, model, loader, task.metrics, ctx.data.evals[split], ctx.data.examples[split])
        for split, loader in eval_loaders(ctx, ctx.data.evals).items()
    }
    for split, result in results.items():
        log.info("%s: %s", split, " ".join(f"{k}={v:.4f}" for k, v in result.items() if k != "num_examples"))
    samples = [row for hook in sample_hooks(cfg, ctx.tokenizer, ctx.run_dir, ctx.accelerator) for row in hook(model, None)]
    first = next(iter(results))
    metrics = {
        "task": task.name,
        "mode": "evaluate",
        "main_metric": task.main_metric,
        "main_metric_mode": task.main_metric_mode,
        "eval": results[first],
        "eval_splits": results,
        "model": ctx.model_source,
        "data": ctx.data.stats,
    }
    summary = split_lines(results)
    summary += [f"samples ({len(samples)}) in samples.jsonl"] if samples else []
    return Outcome(ctx, metrics, summary)
