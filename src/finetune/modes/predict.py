"""mode=predict: predictions for task.predict_split (labelled or not) and GLUE submission files."""

from __future__ import annotations

import logging

from finetune.config import predict_splits
from finetune.errors import ConfigError
from finetune.inference import predict_rows
from finetune.models.heads import HEADS
from finetune.modes.evaluate import eval_loaders
from finetune.modes.outcome import Outcome
from finetune.outputs.predictions import write_predictions, write_submission
from finetune.setup import setup
from finetune.training.evaluation import compute_metrics

log = logging.getLogger("finetune")


def run(cfg) -> Outcome:
    task = cfg.task
    if HEADS[task.head].language_model:
        raise ConfigError(
            f"mode=predict: task '{task.name}' is language modelling, with no labels to predict; use mode=evaluate for "
            f"perplexity, task.head_args.sample_prompts for samples, or pipeline('text-generation', model=<run dir>/model)"
        )
    splits = predict_splits(task)
    ctx = setup(cfg, train_split=None, eval_splits=splits, trained=True, unlabelled_ok=tuple(splits))
    accelerator = ctx.accelerator
    model = ctx.model.to(accelerator.device)
    head = model.head
    predictions, files, scored = {}, {}, {}
    for split, loader in eval_loaders(ctx, ctx.data.evals).items():
        outputs, predictions[split] = predict_rows(accelerator, model, loader, ctx.data.evals[split], ctx.data.examples[split], ctx.labels)
        if outputs.references is not None:
            scored[split] = compute_metrics(head, outputs, task.metrics)
        if accelerator.is_main_process:
            path = write_predictions(ctx.run_dir / "predictions" / f"{split}.tsv", predictions[split], ctx.labels)
            files[split] = {"file": str(path), "rows": len(predictions[split])}
            log.info("%s: %d predictions in %s", split, len(predictions[split]), path)
    submission = []
    if task.submission is not None and accelerator.is_main_process:
        submission = write_submission(ctx.run_dir / "glue", task.submission, predictions)
        for path in submission:
            log.info("GLUE submission file: %s", path)
    metrics = {
        "task": task.name,
        "mode": "predict",
        "main_metric": task.main_metric,
        "main_metric_mode": task.main_metric_mode,
        "predictions": files,
        "submission": [str(p) for p in submission],
        "model": ctx.model_source,
        "data": ctx.data.stats,
    }
    if scored:
        metrics["eval"] = scored[next(iter(scored))]
        metrics["eval_splits"] = scored
    summary = [f"{split}: {info['rows']} predictions -> {info['file']}" for split, info in files.items()]
    summary += [f"GLUE leaderboard file: {path}" for path in submission]
    summary += [f"{split}: " + ", ".join(f"{k}={v:.4f}" for k, v in r.items() if k != "num_examples") for split, r in scored.items()]
    return Outcome(ctx, metrics, summary)
