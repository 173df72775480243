"""One fine-tuning run from a composed config: data -> model -> loop -> metrics -> outputs."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed
from omegaconf import OmegaConf

from finetune.config import to_container, validate
from finetune.data.pipeline import prepare
from finetune.errors import ConfigError, FinetuneError
from finetune.hub import set_offline_mode
from finetune.metrics import AVAILABLE as AVAILABLE_METRICS, KEYS as METRIC_KEYS
from finetune.models.backbone import check_backbone_for_task, load_backbone, load_tokenizer
from finetune.models.heads import HEADS
from finetune.models.task_model import TaskModel, build_head, export
from finetune.training.loop import Trainer

log = logging.getLogger("finetune")
for _noisy in ("accelerate.checkpointing", "accelerate.accelerator"):
    logging.getLogger(_noisy).setLevel(logging.WARNING)


def check_task(task) -> None:
    if task.head not in HEADS:
        raise ConfigError(f"task.head '{task.head}' is not a known head; choose one of {', '.join(HEADS)}")
    unknown = [m for m in task.metrics if m not in AVAILABLE_METRICS]
    if unknown:
        raise ConfigError(f"task.metrics {unknown} unknown; available: {', '.join(AVAILABLE_METRICS)}")
    reported = [key for m in task.metrics for key in METRIC_KEYS[m]]
    if task.main_metric not in reported:
        raise ConfigError(f"task.main_metric '{task.main_metric}' is not reported by task.metrics {list(task.metrics)} (they report {reported})")


def make_accelerator(cfg, run_dir: Path) -> Accelerator:
    use_cpu = cfg.trainer.cpu or not torch.cuda.is_available()
    if use_cpu and cfg.trainer.mixed_precision == "bf16":
        log.warning("bf16 autocast on CPU is much slower than fp32 here; consider trainer.mixed_precision=no")
    mixed_precision = cfg.trainer.mixed_precision
    if mixed_precision == "auto":  # bf16 autocast (fp32 master weights) where it pays: a bf16-capable GPU
        mixed_precision = "bf16" if not use_cpu and torch.cuda.is_bf16_supported() else "no"
    return Accelerator(
        cpu=use_cpu,
        mixed_precision=mixed_precision,
        # Batches come from pinned memory on CUDA (see training.batching): copy them without a host sync.
        dataloader_config=DataLoaderConfiguration(non_blocking=not use_cpu),
        gradient_accumulation_steps=cfg.trainer.grad_accum,
        log_with=cfg.trainer.tracker or None,
        project_dir=str(run_dir),
    )


def _flat_hparams(container: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in container.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flat_hparams(value, f"{name}."))
        elif isinstance(value, (int, float, str, bool)):
            flat[name] = value
    return flat


def run(cfg) -> float:
    """Train and evaluate; return the task's main metric on the first evaluation split."""
    validate(cfg)
    check_task(cfg.task)
    run_dir = Path(cfg.paths.output_dir)
    offline = set_offline_mode(cfg.offline)
    accelerator = make_accelerator(cfg, run_dir)
    set_seed(cfg.seed)

    tokenizer, base_vocab = load_tokenizer(cfg.model, offline)
    head_cls = HEADS[cfg.task.head]
    with accelerator.main_process_first():
        data = prepare(cfg, tokenizer, head_cls, offline)
    labels = list(cfg.task.labels) if cfg.task.labels is not None else None
    num_labels = len(labels) if labels is not None else 1
    set_seed(cfg.seed)
    backbone = load_backbone(cfg.model, tokenizer, base_vocab, offline)
    check_backbone_for_task(cfg.model, cfg.task, num_labels, backbone)
    head = build_head(cfg.task.head, backbone.config.hidden_size, num_labels, cfg.model.head_dropout, dict(cfg.task.head_args),
                      init_std=backbone.config.initializer_range)
    model = TaskModel(backbone, head)

    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    if cfg.trainer.tracker:
        accelerator.init_trackers(cfg.task.name, config=_flat_hparams(to_container(cfg)))
    log.info("task %s: %s; model %s (%.1fM parameters); %s", cfg.task.name, data.stats, cfg.model.name_or_path,
             sum(p.numel() for p in model.parameters()) / 1e6, accelerator.device)

    trainer = Trainer(cfg, accelerator, model, tokenizer, data, run_dir)
    train_summary = trainer.fit()
    trainer.load_best()
    progress = trainer.progress
    best_first = progress.best_metrics[next(iter(progress.best_metrics))]
    metrics = {
        "task": cfg.task.name,
        "main_metric": cfg.task.main_metric,
        "eval": best_first,
        "eval_splits": progress.best_metrics,
        "best_step": progress.best_step,
        "last_eval": progress.history[-1],
        "history": progress.history,
        "train": train_summary,
        "data": data.stats,
    }
    if accelerator.is_main_process:
        export(accelerator.unwrap_model(trainer.model), tokenizer, cfg.task, labels, run_dir / "model")
        (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        log.info("%s=%.4f (best, step %d)", cfg.task.main_metric, progress.best_value, progress.best_step)
        print(f"{cfg.task.name}: {cfg.task.main_metric}={progress.best_value:.4f}; outputs in {run_dir}")
    accelerator.wait_for_everyone()
    # Not accelerator.end_training(): that also destroys the process group, which belongs to the
    # launch (a -m sweep inside one `accelerate launch` reuses it); train.py ends it at exit.
    for tracker in accelerator.trackers:
        tracker.finish()
    return float(progress.best_value)


def _job_failed(cfg, err: BaseException) -> float:
    """Within a sweep: log the failure, leave failure.json in the job directory, go on (NaN)."""
    from finetune.sweep import record_failure

    expected = isinstance(err, FinetuneError)
    log.error("job failed: %s%s", "" if expected else f"{type(err).__name__}: ", err, exc_info=not expected)
    try:
        from hydra.core.hydra_config import HydraConfig

        overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
        output_dir = cfg.paths.output_dir
    except Exception:  # no Hydra runtime (called from Python): still return NaN
        overrides, output_dir = [], None
    record_failure(output_dir, err, overrides)
    return float("nan")


def run_and_report(cfg, multirun: bool = False):
    """Run; turn input errors into one line and exit code 2 (or a logged failure within a sweep).

    In a sweep (multirun) any exception fails only its job: it is logged, recorded in the job's
    failure.json and returned as NaN, and the sweep goes on (FINETUNE_DEBUG=1 re-raises).
    Accelerate's state is reset and memory released after every job (finetune.sweep.end_job).
    """
    try:
        return run(cfg)
    except FinetuneError as err:
        if os.environ.get("FINETUNE_DEBUG"):
            raise
        if multirun:
            return _job_failed(cfg, err)
        # One line, whatever a wrapped library message contains.
        message = "; ".join(line.strip() for line in str(err).splitlines() if line.strip()) or type(err).__name__
        print(f"error: {message}", file=sys.stderr)
        sys.exit(err.exit_code)
    except Exception as err:
        if multirun and not os.environ.get("FINETUNE_DEBUG"):
            return _job_failed(cfg, err)
        raise
    finally:
        from finetune.sweep import end_job

        end_job()
