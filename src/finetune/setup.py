"""The setup every mode shares: Accelerator, tokenizer, data and model from a validated config.

A mode (finetune.modes) says what it needs, never which mode it is: the splits to load, whether the
model is a pretrained backbone with a new head (`trained=False`: training) or a fine-tuned model
(`trained=True`: an exported `model/` directory or a `checkpoints/step-N` directory), and which
splits may come without labels.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed
from omegaconf import OmegaConf, open_dict

from finetune.data.pipeline import TaskData, prepare
from finetune.errors import ModelError
from finetune.hub import set_offline_mode
from finetune.models.backbone import check_backbone_for_task, enable_activation_checkpointing, load_backbone, load_tokenizer
from finetune.models.heads import HEADS
from finetune.models.lora import ADAPTER_WEIGHTS, apply_lora, base_reference
from finetune.models.task_model import (
    CHECKPOINT_WEIGHTS, MANIFEST, TaskModel, build_head, load_trained, trained_kind,
)

log = logging.getLogger("finetune")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
KIND_NAMES = {"checkpoint": "checkpoint", "adapter": "adapter", "exported": "exported model"}


@dataclass(frozen=True)
class RunContext:
    cfg: object
    accelerator: Accelerator
    run_dir: Path
    tokenizer: object
    model: TaskModel
    data: TaskData
    labels: list[str] | None
    model_source: dict  # where the weights came from: kind (pretrained, exported, checkpoint, fresh_head) and path


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
        # No gradient_accumulation_steps: the loop groups micro-batches into optimizer steps itself
        # and normalises each loss over the whole step (finetune.training.loop).
        log_with=cfg.trainer.tracker or None,
        project_dir=str(run_dir),
    )


def task_labels(task) -> list[str] | None:
    return list(task.labels) if task.labels is not None else None


def _pretrained_model(cfg, tokenizer, base_vocab: int, offline: bool, labels) -> TaskModel:
    num_labels = len(labels) if labels is not None else 1
    set_seed(cfg.seed)
    backbone = load_backbone(cfg.model, tokenizer, base_vocab, offline)
    check_backbone_for_task(cfg.model, cfg.task, num_labels, backbone)
    head = build_head(cfg.task.head, backbone.config.hidden_size, num_labels, cfg.model.head_dropout, dict(cfg.task.head_args),
                      init_std=backbone.config.initializer_range)
    model = TaskModel(backbone, head)
    if cfg.peft is not None:  # after the head, so a seed draws the same head with and without LoRA
        apply_lora(model, cfg.peft, base_model=base_reference(cfg.model))
    if cfg.model.activation_checkpointing:
        enable_activation_checkpointing(model.backbone)
    return model


def check_trained_for_task(manifest: dict, task, path: str) -> None:
    """A fine-tuned model scores a task only with the head and labels it was trained with."""
    labels = task_labels(task)
    theirs = manifest.get("labels")
    if manifest.get("head") == task.head and theirs == labels:
        return
    def describe(head, names):
        return f"a '{head}' head with " + (f"labels {', '.join(names)}" if names else "one regression output")
    raise ModelError(
        f"model.name_or_path '{path}' is fine-tuned for task '{manifest.get('task')}' with "
        f"{describe(manifest.get('head'), theirs)}, but task '{task.name}' has {describe(task.head, labels)}: "
        f"use task={manifest.get('task')}, or a model fine-tuned for {task.name}"
    )


def _trained_model(cfg, offline: bool):
    """(model, tokenizer, source) for evaluate/predict: the fine-tuned model at model.name_or_path
    (a run's model/, adapter/ or checkpoints/step-N directory)."""
    name = cfg.model.name_or_path
    path = Path(name).expanduser()
    kind = trained_kind(path) if path.is_dir() else None
    if kind is None:
        return None
    weights = {"checkpoint": [CHECKPOINT_WEIGHTS], "adapter": [ADAPTER_WEIGHTS]}.get(kind, WEIGHT_FILES)
    if not any((path / w).is_file() for w in weights):
        raise ModelError(f"model.name_or_path '{name}' has no weights ({' or '.join(weights)}): it is not a complete "
                         f"{KIND_NAMES[kind]} directory")
    manifest_file = path / MANIFEST
    if not manifest_file.is_file():
        raise ModelError(f"checkpoint '{name}' has no {MANIFEST} (written by an older version): evaluate the run's model/ directory")
    manifest = json.loads(manifest_file.read_text())
    check_trained_for_task(manifest, cfg.task, name)
    if cfg.peft is not None:
        log.warning("peft=%s is ignored: a fine-tuned model is loaded as it was saved (%s)", cfg.peft.method, name)
    if cfg.model.adapter_base and kind != "adapter":
        log.warning("model.adapter_base is ignored: '%s' is not an adapter directory", name)
    try:
        model, tokenizer, manifest = load_trained(path, adapter_base=cfg.model.adapter_base, offline=offline)
    except (OSError, ValueError, RuntimeError, KeyError) as err:
        first = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
        raise ModelError(f"model.name_or_path '{name}': could not load the fine-tuned model ({type(err).__name__}: {first}); "
                         f"its files may be corrupt or incomplete") from err
    if cfg.model.tokenizer:
        log.warning("model.tokenizer is ignored: a fine-tuned model is read with its own tokenizer (%s)", name)
    n_positions = getattr(model.backbone.config, "n_positions", None)
    if n_positions is not None and cfg.task.max_length > n_positions:
        raise ModelError(f"task.max_length={cfg.task.max_length} is longer than the model's context window "
                         f"({n_positions} positions): set task.max_length<={n_positions}")
    saved_args = manifest.get("head_args") or {}
    if saved_args != OmegaConf.to_container(cfg.task.head_args, resolve=True):
        log.warning("head_args of the model (%s) are used instead of task.head_args (%s)", saved_args, dict(cfg.task.head_args))
    with open_dict(cfg):
        cfg.task.head_args = saved_args  # the input format the model was trained with
    source = {"kind": kind, "path": str(path)}
    if kind == "adapter":
        source["base_model"] = cfg.model.adapter_base or (manifest.get("peft") or {}).get("base_model")
    return model, tokenizer, source


def quiet_library_progress_bars() -> None:
    """One progress bar on the console, ours: datasets' per-map bars and transformers' "Writing model
    shards" would otherwise interleave with it and the log (the log says what is being loaded)."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()


def setup(cfg, *, train_split: str | None, eval_splits: list[str], trained: bool, unlabelled_ok: tuple = ()) -> RunContext:
    """Everything a mode runs on. Writes config.yaml into the run directory once all of it loaded."""
    quiet_library_progress_bars()
    run_dir = Path(cfg.paths.output_dir)
    offline = set_offline_mode(cfg.offline)
    accelerator = make_accelerator(cfg, run_dir)
    set_seed(cfg.seed)
    labels = task_labels(cfg.task)
    loaded = _trained_model(cfg, offline) if trained else None
    if trained and loaded is None and not cfg.mode.fresh_head:
        if not Path(cfg.model.name_or_path).expanduser().exists():
            raise ModelError(f"model.name_or_path '{cfg.model.name_or_path}' does not exist (mode={cfg.mode.name} needs a "
                             f"fine-tuned model: a run's model/ or checkpoints/step-N directory)")
        raise ModelError(
            f"model.name_or_path '{cfg.model.name_or_path}' is not a fine-tuned model (no {MANIFEST}): evaluating an untrained "
            f"head is almost always a mistake; pass a run's model/ or checkpoints/step-N directory, or set mode.fresh_head=true"
        )
    if loaded is not None:
        model, tokenizer, source = loaded
    else:
        tokenizer, base_vocab = load_tokenizer(cfg.model, offline)
    head_cls = HEADS[cfg.task.head]
    with accelerator.main_process_first():
        data = prepare(cfg, tokenizer, head_cls, offline, train_split, eval_splits, unlabelled_ok)
    if loaded is None:
        model = _pretrained_model(cfg, tokenizer, base_vocab, offline, labels)
        source = {"kind": "fresh_head" if trained else "pretrained", "path": cfg.model.name_or_path}
        if trained:
            log.warning("mode.fresh_head=true: scoring %s with an untrained %s head", cfg.model.name_or_path, cfg.task.head)
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    return RunContext(cfg, accelerator, run_dir, tokenizer, model, data, labels, source)
