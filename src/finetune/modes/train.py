"""mode=train: fine-tune a pretrained backbone with a new head, keep the best evaluation, export it."""

from __future__ import annotations

import logging
import os
from functools import partial

from finetune.config import to_container
from finetune.data.input_formats import FORMATS
from finetune.errors import ConfigError
from finetune.generation import sample_hooks
from finetune.metrics import main_metric_mode
from finetune.models.artifacts import export, manifest_for, merged_record, write_adapter, write_model_files
from finetune.models.lora import has_adapters, merge
from finetune.modes.outcome import Outcome
from finetune.outputs.curves import write_curves
from finetune.outputs.model_card import write_model_card
from finetune.setup import setup
from finetune.training.batching import build_train_loader, compile_model, enable_tf32, eval_loaders, padding_multiple
from finetune.training.loop import Trainer
from finetune.training.progress import Objective, Schedule
from finetune.training.memory import describe_parameters, estimate_training, parameter_counts
from finetune.training.optim import build_optimizer, build_scheduler

log = logging.getLogger("finetune")


def check(cfg) -> None:
    """What the config alone says cannot train (the data-dependent part: finetune.training.loop.Schedule)."""
    if cfg.trainer.grad_accum > 1 and os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() in ("1", "true"):
        raise ConfigError("trainer.grad_accum > 1 is not supported under DeepSpeed here (its engine accumulates by "
                          "itself); raise trainer.batch_size or the number of processes instead")


def flat_hparams(container: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in container.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flat_hparams(value, f"{name}."))
        elif isinstance(value, (int, float, str, bool)):
            flat[name] = value
    return flat


def build_trainer(ctx, write_model_files=None, on_evaluate=()) -> Trainer:
    """The loop's objects from the run context: loaders (finetune.training.batching), optimizer,
    Accelerate's preparation, then the schedule and LR scheduler over the prepared loader's length."""
    cfg, accelerator, model, data = ctx.cfg, ctx.accelerator, ctx.model, ctx.data
    on_cuda = accelerator.device.type == "cuda"
    attention = getattr(getattr(model.backbone, "config", None), "_attn_implementation", None) or cfg.model.attn_implementation
    train_loader, sampler = build_train_loader(cfg.trainer, data.train, ctx.tokenizer, data.input_format, cfg.task.max_length,
                                               cfg.seed, pin_memory=on_cuda, on_cuda=on_cuda, attn_implementation=attention)
    if on_cuda and cfg.trainer.tf32:
        enable_tf32()
    if cfg.trainer.compile:
        compile_model(model, cfg.trainer)
    identity = {"task": cfg.task.name, "head": cfg.task.head, "num_labels": model.head.num_labels,
                "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad)}
    optimizer = build_optimizer(model, cfg.optim, on_cuda)
    prepared, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    evaluation = eval_loaders(cfg.trainer, data.evals, ctx.tokenizer, data.input_format, cfg.task.max_length, cfg.seed, accelerator)
    schedule = Schedule.of(cfg.trainer, len(train_loader))
    # Stepped by hand once per optimizer step (not prepared: Accelerate would step it once per process).
    scheduler = build_scheduler(optimizer, cfg.optim, schedule.total_steps)
    objective = Objective(tuple(cfg.task.metrics), cfg.task.main_metric, main_metric_mode(cfg.task))
    return Trainer(accelerator, prepared, optimizer, scheduler, train_loader, sampler, evaluation, data,
                   settings=cfg.trainer, schedule=schedule, objective=objective, identity=identity,
                   max_grad_norm=cfg.optim.max_grad_norm, run_dir=ctx.run_dir, write_model_files=write_model_files,
                   on_evaluate=on_evaluate)


def write_exports(ctx, final, manifest, metrics: dict) -> None:
    """adapter/ (LoRA alone) first, then model/ with the adapters merged into the weights; model cards."""
    cfg, tokenizer = ctx.cfg, ctx.tokenizer
    merged_adapters = None
    if has_adapters(final):
        adapter = write_adapter(final, tokenizer, manifest, ctx.run_dir / "adapter")
        write_model_card(ctx.run_dir / "adapter", manifest.replace(peft=adapter), cfg, metrics)
        final, merged_adapters = merge(final), merged_record(adapter)
    exported = export(final, tokenizer, cfg.task, ctx.labels, ctx.run_dir / "model", merged_adapters=merged_adapters)
    write_model_card(ctx.run_dir / "model", exported, cfg, metrics)


def run(cfg) -> Outcome:
    task = cfg.task
    ctx = setup(cfg, train_split=task.train_split, eval_splits=list(task.eval_splits), weights="pretrained")
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
    trainer = build_trainer(ctx, write_model_files=partial(write_model_files, model, tokenizer, manifest),
                            on_evaluate=sample_hooks(cfg, tokenizer, ctx.run_dir, accelerator))
    collate = FORMATS[ctx.data.input_format].collator(tokenizer, padding_multiple(cfg.trainer, task.max_length))
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
        "main_metric_mode": trainer.objective.mode,
        "eval": progress.best_metrics[first_split],
        "eval_splits": progress.best_metrics,
        "best_step": progress.best_step,
        "last_eval": progress.history[-1],
        "history": progress.history,
        "train": train_summary,
        "data": ctx.data.stats,
    }
    if accelerator.is_main_process:
        write_exports(ctx, accelerator.unwrap_model(trainer.model), manifest, metrics)
        write_curves(ctx.run_dir / "curves.png", progress.train_log, progress.history, first_split, task.main_metric)
    log.info("%s=%.4f (best, step %d)", task.main_metric, progress.best_value, progress.best_step)
    return Outcome(ctx, metrics, summary_lines(cfg, progress, train_summary, memory, trainable, total))


def summary_lines(cfg, progress, train_summary: dict, memory, trainable: int, total: int) -> list[str]:
    stopped = (f"; stopped early at step {train_summary['stopped_at_step']}" if train_summary["stopped_early"] else "")
    speed = train_summary["examples_per_second"]
    estimated, on_cuda = memory.as_mb(), train_summary["peak_memory_kind"] == "cuda_max_allocated"
    lora = cfg.peft is not None
    return [
        f"best {cfg.task.main_metric}={progress.best_value:.4f} at step {progress.best_step} of {train_summary['steps']}{stopped}",
        f"trained {train_summary['train_seconds']:.1f} s" + (f", {speed:.1f} examples/s" if speed else ""),
        f"{describe_parameters(trainable, total)}; peak memory {train_summary['peak_memory_mb']:.0f} MiB "
        + (f"(CUDA max allocated; estimate {estimated['total']:.0f})" if on_cuda
           else f"(RSS growth during training; estimate without the weights {estimated['added_by_training']:.0f})"),
        "model/ (exported best model" + (", LoRA merged" if lora else "") + ", README.md model card), "
        + ("adapter/ (LoRA adapter with the head, for peft), " if lora else "")
        + "metrics.json, curves.png, train.log, checkpoints/",
    ]
