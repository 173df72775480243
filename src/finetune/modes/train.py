"""mode=train: fine-tune a pretrained backbone with a new head, keep the best evaluation, export it."""

from __future__ import annotations

import logging
from functools import partial

from finetune.config import to_container
from finetune.generation import sample_hooks
from finetune.models.task_model import export, manifest_for, write_model_files
from finetune.modes.outcome import Outcome
from finetune.outputs.curves import write_curves
from finetune.outputs.model_card import write_model_card
from finetune.setup import setup
from finetune.training.loop import Trainer

log = logging.getLogger("finetune")


def flat_hparams(container: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in container.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flat_hparams(value, f"{name}."))
        elif isinstance(value, (int, float, str, bool)):
            flat[name] = value
    return flat


def run(cfg) -> Outcome:
    task = cfg.task
    ctx = setup(cfg, train_split=task.train_split, eval_splits=list(task.eval_splits), trained=False)
    accelerator, model, tokenizer = ctx.accelerator, ctx.model, ctx.tokenizer
    if cfg.trainer.tracker:
        accelerator.init_trackers(task.name, config=flat_hparams(to_container(cfg)))
    log.info("task %s: %s; model %s (%.1fM parameters); %s", task.name,
             ", ".join(f"{split} {s['rows']} rows" for split, s in ctx.data.stats.items()), cfg.model.name_or_path,
             sum(p.numel() for p in model.parameters()) / 1e6, accelerator.device)

    manifest = manifest_for(model, tokenizer, task, ctx.labels)
    trainer = Trainer(cfg, accelerator, model, tokenizer, ctx.data, ctx.run_dir,
                      write_model_files=partial(write_model_files, model, tokenizer, manifest),
                      on_evaluate=sample_hooks(cfg, tokenizer, ctx.run_dir, accelerator))
    train_summary = trainer.fit()
    trainer.load_best()
    progress = trainer.progress
    first_split = next(iter(progress.best_metrics))
    metrics = {
        "task": task.name,
        "mode": "train",
        "main_metric": task.main_metric,
        "main_metric_mode": task.main_metric_mode,
        "eval": progress.best_metrics[first_split],
        "eval_splits": progress.best_metrics,
        "best_step": progress.best_step,
        "last_eval": progress.history[-1],
        "history": progress.history,
        "train": train_summary,
        "data": ctx.data.stats,
    }
    if accelerator.is_main_process:
        model_dir = ctx.run_dir / "model"
        manifest = export(accelerator.unwrap_model(trainer.model), tokenizer, task, ctx.labels, model_dir)
        write_model_card(model_dir, manifest, cfg, metrics)
        write_curves(ctx.run_dir / "curves.png", progress.train_log, progress.history, first_split, task.main_metric)
    log.info("%s=%.4f (best, step %d)", task.main_metric, progress.best_value, progress.best_step)
    stopped = (f"; stopped early at step {train_summary['stopped_at_step']}" if train_summary["stopped_early"] else "")
    speed = train_summary["examples_per_second"]
    summary = [
        f"best {task.main_metric}={progress.best_value:.4f} at step {progress.best_step} of {train_summary['steps']}{stopped}",
        f"trained {train_summary['train_seconds']:.1f} s" + (f", {speed:.1f} examples/s" if speed else ""),
        "model/ (exported best model, README.md model card), metrics.json, curves.png, train.log, checkpoints/",
    ]
    return Outcome(ctx, metrics, summary)
