"""mode=predict: predictions for task.predict_split (labelled or not) and GLUE submission files."""

from __future__ import annotations

import logging

from finetune.config import predict_splits
from finetune.errors import ConfigError
from finetune.inference import predict_rows
from finetune.metrics import main_metric_mode
from finetune.models.heads import HEADS
from finetune.modes.outcome import Outcome
from finetune.outputs.predictions import write_predictions, write_submission
from finetune.setup import setup
from finetune.training.batching import eval_loaders
from finetune.training.evaluation import compute_metrics

log = logging.getLogger("finetune")


def check(cfg) -> None:
    head = HEADS[cfg.task.head]
    if not head.predicts:
        raise ConfigError(f"mode=predict: task '{cfg.task.name}' {head.no_predictions}")


def run(cfg) -> Outcome:
    task = cfg.task
    splits = predict_splits(task)
    ctx = setup(cfg, train_split=None, eval_splits=splits, weights="fine_tuned", unlabelled_ok=tuple(splits),
                fresh_head_ok=cfg.mode.fresh_head)
    accelerator = ctx.accelerator
    model = ctx.model.to(accelerator.device)
    predictions, files, scored = {}, {}, {}
    loaders = eval_loaders(cfg.trainer, ctx.data.evals, ctx.tokenizer, ctx.data.input_format, task.max_length, cfg.seed, accelerator)
    for split, loader in loaders.items():
        outputs, predictions[split] = predict_rows(accelerator, model, loader, ctx.data.evals[split], ctx.data.examples[split], ctx.labels)
        if outputs.references is not None:
            scored[split] = compute_metrics(model.head, outputs, task.metrics)
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
        "main_metric_mode": main_metric_mode(task),
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
