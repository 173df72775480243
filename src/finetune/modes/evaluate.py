"""mode=evaluate: score a fine-tuned model on every eval split of the task, without training.

A head with no weights of its own (a language model) also accepts a pretrained model as it is
(perplexity before any training), and continues its sample prompts into samples.jsonl.
"""

from __future__ import annotations

import logging

from finetune.generation import sample_hooks
from finetune.metrics import main_metric_mode
from finetune.modes.outcome import Outcome, split_lines
from finetune.setup import setup
from finetune.training.batching import eval_loaders
from finetune.training.evaluation import evaluate_split

log = logging.getLogger("finetune")


def check(cfg) -> None:
    """Nothing beyond the shared checks: any task can be evaluated."""


def run(cfg) -> Outcome:
    task = cfg.task
    ctx = setup(cfg, train_split=None, eval_splits=list(task.eval_splits), weights="fine_tuned", fresh_head_ok=cfg.mode.fresh_head)
    model = ctx.model.to(ctx.accelerator.device)
    loaders = eval_loaders(cfg.trainer, ctx.data.evals, ctx.tokenizer, ctx.data.input_format, task.max_length, cfg.seed, ctx.accelerator)
    results = {
        split: evaluate_split(ctx.accelerator, model, loader, task.metrics, ctx.data.evals[split], ctx.data.examples[split])
        for split, loader in loaders.items()
    }
    for split, result in results.items():
        log.info("%s: %s", split, " ".join(f"{k}={v:.4f}" for k, v in result.items() if k != "num_examples"))
    samples = [row for hook in sample_hooks(cfg, ctx.tokenizer, ctx.run_dir, ctx.accelerator) for row in hook(model, None)]
    first = next(iter(results))
    metrics = {
        "task": task.name,
        "mode": "evaluate",
        "main_metric": task.main_metric,
        "main_metric_mode": main_metric_mode(task),
        "eval": results[first],
        "eval_splits": results,
        "model": ctx.model_source,
        "data": ctx.data.stats,
    }
    summary = split_lines(results)
    summary += [f"samples ({len(samples)}) in samples.jsonl"] if samples else []
    return Outcome(ctx, metrics, summary)
