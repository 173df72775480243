"""mode=train: fine-tune a pretrained backbone with a new head, keep the best evaluation, export it."""

from __future__ import annotations

import logging
from functools import partial

from finetune.config import to_container
from finetune.data.collate import make_collator
from finetune.generation import sample_hooks
from finetune.models.lora import has_adapters, merge, merged_record, write_adapter
from finetune.models.task_model import export, manifest_for, write_model_files
from finetune.modes.outcome import Outcome
from finetune.outputs.curves import write_curves
from finetune.outputs.model_card import write_model_card
from finetune.setup import setup
from finetune.training.batching import padding_multiple
from finetune.training.loop import Trainer
from finetune.training.memory import describe_parameters, estimate_training, parameter_counts

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
    log.info("task %s: %s; model %s; %s", task.name,
             ", ".join(f"{split} {s['rows']} rows" for split, s in ctx.data.stats.items()), cfg.model.name_or_path,
             accelerator.device)
    trainable, total = parameter_counts(model)
    lora = f" (LoRA r={cfg.peft.r} on {', '.join(cfg.peft.target_modules)}, and the head)" if cfg.peft is not None else ""
    log.info("%s%s", describe_parameters(trainable, total), lora)

    manifest = manifest_for(model, tokenizer, task, ctx.labels)
    trainer = Trainer(cfg, accelerator, model, tokenizer, ctx.data, ctx.run_dir,
                      write_model_files=partial(write_model_files, model, tokenizer, manifest),
                      on_evaluate=sample_hooks(cfg, tokenizer, ctx.run_dir, accelerator))
    collate = make_collator(ctx.data.input_format, tokenizer, padding_multiple(cfg.trainer, task.max_length))
    memory = estimate_training(accelerator.unwrap_model(trainer.model), accelerator, cfg.trainer, ctx.data.train, collate,
                               task.max_length, trainer.sampler)
    log.info("%s (%s MiB on top of the weights)%s", memory.describe(), f"{memory.as_mb()['added_by_training']:.0f}",
             "; activation checkpointing on" if cfg.model.activation_checkpointing else "")
    train_summary = trainer.fit()
    train_summary.update(trainable_parameters=trainable, total_parameters=total, memory_estimate_mb=memory.as_mb())
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
        final, merged_adapters = accelerator.unwrap_model(trainer.model), None
        if has_adapters(final):  # adapter/ alone first, then model/ with the adapters merged into the weights
            adapter = write_adapter(final, tokenizer, manifest, ctx.run_dir / "adapter")
            write_model_card(ctx.run_dir / "adapter", {**manifest, "peft": adapter}, cfg, metrics)
            final, merged_adapters = merge(final), merged_record(adapter)
        manifest = export(final, tokenizer, task, ctx.labels, model_dir, merged_adapters=merged_adapters)
        write_model_card(model_dir, manifest, cfg, metrics)
        write_curves(ctx.run_dir / "curves.png", progress.train_log, progress.history, first_split, task.main_metric)
    log.info("%s=%.4f (best, step %d)", task.main_metric, progress.best_value, progress.best_step)
    stopped = (f"; stopped early at step {train_summary['stopped_at_step']}" if train_summary["stopped_early"] else "")
    speed = train_summary["examples_per_second"]
    estimated, on_cuda = memory.as_mb(), train_summary["peak_memory_kind"] == "cuda_max_allocated"
    summary = [
        f"best {task.main_metric}={progress.best_value:.4f} at step {progress.best_step} of {train_summary['steps']}{stopped}",
        f"trained {train_summary['train_seconds']:.1f} s" + (f", {speed:.1f} examples/s" if speed else ""),
        f"{describe_parameters(trainable, total)}; peak memory {train_summary['peak_memory_mb']:.0f} MiB "
        + (f"(CUDA max allocated; estimate {estimated['total']:.0f})" if on_cuda
           else f"(RSS growth during training; estimate without the weights {estimated['added_by_training']:.0f})"),
        "model/ (exported best model" + (", LoRA merged" if cfg.peft is not None else "") + ", README.md model card), "
        + ("adapter/ (LoRA adapter with the head, for peft), " if cfg.peft is not None else "")
        + "metrics.json, curves.png, train.log, checkpoints/",
    ]
    return Outcome(ctx, metrics, summary)
