"""The setup every mode shares: Accelerator, tokenizer, data and model from a validated config.

A mode (finetune.modes) says what it needs, never which mode it is: the splits to load, which
weights (`weights`: "pretrained", a backbone with a new head, for training; "fine_tuned", a run's
model/, adapter/ or checkpoints/step-N; "language_model", a causal LM scored as it is, with the
standardised rows of the splits instead of features), which splits may come without labels, and
whether an untrained head may be evaluated. Setup never writes into the config: what it decides
(e.g. a fine-tuned model's own input format) is in the returned `RunContext`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed
from omegaconf import OmegaConf

from finetune.data.pipeline import TaskData, load_rows, prepare
from finetune.errors import ModelError
from finetune.hub import set_offline_mode
from finetune.models.artifacts import open_trained, trained_manifest
from finetune.models.backbone import (
    check_backbone_for_task, enable_activation_checkpointing, load_backbone, load_causal_lm, load_tokenizer,
)
from finetune.models.heads import HEADS
from finetune.models.lora import apply_lora, base_reference
from finetune.models.manifest import MANIFEST
from finetune.models.task_model import TaskModel, build_head
from finetune.training.allocator import configure_host_allocator

log = logging.getLogger("finetune")
WEIGHTS = ("pretrained", "fine_tuned", "language_model")


@dataclass(frozen=True)
class RunContext:
    cfg: object
    accelerator: Accelerator
    run_dir: Path
    tokenizer: object
    model: TaskModel  # weights="language_model": a causal LM (GPT2LMHeadModel)
    data: TaskData
    labels: list[str] | None
    model_source: dict  # where the weights came from: kind (pretrained, exported, checkpoint, adapter, fresh_head, language_model) and path
    head_args: dict  # the input format the data was prepared with: task.head_args, or a fine-tuned model's own


def make_accelerator(cfg, run_dir: Path) -> Accelerator:
    use_cpu = cfg.trainer.cpu or not torch.cuda.is_available()
    if use_cpu and cfg.trainer.mixed_precision == "bf16":
        log.warning("bf16 autocast on CPU is much slower than fp32 here; consider trainer.mixed_precision=no")
    mixed_precision = cfg.trainer.mixed_precision
    if mixed_precision == "auto":  # bf16 autocast (fp32 master weights) where it pays: a bf16-capable GPU
        mixed_precision = "bf16" if not use_cpu and torch.cuda.is_bf16_supported() else "no"
    accelerator = Accelerator(
        cpu=use_cpu,
        mixed_precision=mixed_precision,
        # Batches come from pinned memory on CUDA (see training.batching): copy them without a host sync.
        dataloader_config=DataLoaderConfiguration(non_blocking=not use_cpu),
        # No gradient_accumulation_steps: the loop groups micro-batches into optimizer steps itself
        # and normalises each loss over the whole step (finetune.training.loop).
        log_with=cfg.trainer.tracker or None,
        project_dir=str(run_dir),
    )
    configure_host_allocator(cfg.trainer.reuse_host_memory, accelerator.device.type)
    return accelerator


def task_labels(task) -> list[str] | None:
    return list(task.labels) if task.labels is not None else None


def _pretrained_model(cfg, tokenizer, base_vocab: int, offline: bool, labels) -> TaskModel:
    num_labels = len(labels) if labels is not None else 1
    set_seed(cfg.seed)
    backbone = load_backbone(cfg.model, tokenizer, base_vocab, offline)
    check_backbone_for_task(cfg.model, cfg.task, num_labels, backbone)
    head = build_head(cfg.task.head, backbone.config.hidden_size, num_labels, cfg.model.head_dropout, dict(cfg.task.head_args),
                      init_std=backbone.config.initializer_range)
    model = TaskModel(backbone, head, aux_lm_weight=cfg.task.aux_lm_weight)
    if cfg.peft is not None:  # after the head, so a seed draws the same head with and without LoRA
        apply_lora(model, cfg.peft, base_model=base_reference(cfg.model))
    if cfg.model.activation_checkpointing:
        enable_activation_checkpointing(model.backbone)
    return model


def check_trained_for_task(manifest, task, path: str) -> None:
    """A fine-tuned model scores a task only with the head and labels it was trained with (a
    label-free head, such as a language model: any task of that head)."""
    labels = task_labels(task)
    head_cls = HEADS[task.head]
    if manifest.head == task.head and (manifest.labels == labels or not head_cls.needs_labels):
        return

    def describe(head, names):
        if head in HEADS and not HEADS[head].needs_labels:
            return f"a '{head}' head (a language model)"
        return f"a '{head}' head with " + (f"labels {', '.join(names)}" if names else "one regression output")
    raise ModelError(
        f"model.name_or_path '{path}' is fine-tuned for task '{manifest.task}' with "
        f"{describe(manifest.head, manifest.labels)}, but task '{task.name}' has {describe(task.head, labels)}: "
        f"use task={manifest.task}, or a model fine-tuned for {task.name}"
    )


def _trained_model(cfg, offline: bool):
    """(model, tokenizer, source, head_args) for evaluate/predict: the fine-tuned model at
    model.name_or_path (a run's model/, adapter/ or checkpoints/step-N directory); None when the
    directory is not one. `head_args`: the input format the model was trained with."""
    name = cfg.model.name_or_path
    path = Path(name).expanduser()
    what = f"model.name_or_path '{name}'"
    found = trained_manifest(path, what)
    if found is None:
        return None
    kind, manifest = found
    check_trained_for_task(manifest, cfg.task, name)
    if cfg.peft is not None:
        log.warning("peft=%s is ignored: a fine-tuned model is loaded as it was saved (%s)", cfg.peft.method, name)
    if cfg.model.adapter_base and kind != "adapter":
        log.warning("model.adapter_base is ignored: '%s' is not an adapter directory", name)
    model, tokenizer, manifest = open_trained(path, what, adapter_base=cfg.model.adapter_base, offline=offline)
    if cfg.model.tokenizer:
        log.info("model.tokenizer is not used: a fine-tuned model is read with its own tokenizer (%s)", name)
    n_positions = getattr(model.backbone.config, "n_positions", None)
    if n_positions is not None and cfg.task.max_length > n_positions:
        raise ModelError(f"task.max_length={cfg.task.max_length} is longer than the model's context window "
                         f"({n_positions} positions): set task.max_length<={n_positions}")
    task_args = OmegaConf.to_container(cfg.task.head_args, resolve=True)
    head_args = dict(manifest.head_args)
    kept = HEADS[cfg.task.head].trained_args
    if kept is not None:
        head_args = {**task_args, **{k: head_args[k] for k in kept if k in head_args}}
    if head_args != task_args:
        log.warning("head_args of the model (%s) are used instead of task.head_args (%s)", head_args, task_args)
    source = {"kind": kind, "path": str(path)}
    if kind == "adapter":
        source["base_model"] = cfg.model.adapter_base or (manifest.peft or {}).get("base_model")
    return model, tokenizer, source, head_args


def _untrained_head_error(cfg) -> ModelError:
    name = cfg.model.name_or_path
    if cfg.model.from_scratch:
        what = f"model '{name}' is a new random model (model.from_scratch=true), not a fine-tuned one"
    elif not Path(name).expanduser().exists():
        what = f"model.name_or_path '{name}' does not exist as a directory, so it is not a fine-tuned model"
    else:
        what = f"model.name_or_path '{name}' is not a fine-tuned model (no {MANIFEST})"
    return ModelError(
        f"{what}: evaluating an untrained head is almost always a mistake; pass a run's model/ or "
        f"checkpoints/step-N directory as model.name_or_path, or set mode.fresh_head=true"
    )


def quiet_library_progress_bars() -> None:
    """One progress bar on the console, ours: datasets' per-map bars and transformers' "Writing model
    shards" would otherwise interleave with it and the log (the log says what is being loaded)."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()


def _write_config(accelerator, run_dir: Path, cfg) -> None:
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))


def setup(cfg, *, train_split: str | None, eval_splits: list[str], weights: str, unlabelled_ok: tuple = (),
          fresh_head_ok: bool = False) -> RunContext:
    """Everything a mode runs on (see the module docstring). Writes config.yaml into the run directory
    once all of it loaded."""
    if weights not in WEIGHTS:
        raise ValueError(f"weights={weights!r}: expected one of {', '.join(WEIGHTS)}")
    quiet_library_progress_bars()
    run_dir = Path(cfg.paths.output_dir)
    offline = set_offline_mode(cfg.offline)
    accelerator = make_accelerator(cfg, run_dir)
    set_seed(cfg.seed)
    if weights == "language_model":
        ctx = _language_model_context(cfg, accelerator, run_dir, offline, train_split, eval_splits)
    else:
        ctx = _task_model_context(cfg, accelerator, run_dir, offline, train_split, eval_splits, weights == "fine_tuned",
                                  unlabelled_ok, fresh_head_ok)
    _write_config(accelerator, run_dir, cfg)
    return ctx


def _task_model_context(cfg, accelerator, run_dir, offline, train_split, eval_splits, fine_tuned: bool, unlabelled_ok,
                        fresh_head_ok: bool) -> RunContext:
    labels = task_labels(cfg.task)
    head_cls = HEADS[cfg.task.head]
    loaded = _trained_model(cfg, offline) if fine_tuned else None
    # A head with no weights of its own (the tied LM head) is complete on a pretrained backbone.
    untrained = fine_tuned and loaded is None and head_cls.has_own_weights
    if untrained and not fresh_head_ok:
        raise _untrained_head_error(cfg)
    if loaded is not None:
        model, tokenizer, source, head_args = loaded
    else:
        tokenizer, base_vocab = load_tokenizer(cfg.model, offline)
        head_args = OmegaConf.to_container(cfg.task.head_args, resolve=True)
    with accelerator.main_process_first():
        data = prepare(cfg, tokenizer, head_cls, offline, train_split, eval_splits, unlabelled_ok, head_args=head_args)
    if loaded is None:
        model = _pretrained_model(cfg, tokenizer, base_vocab, offline, labels)
        source = {"kind": "fresh_head" if untrained else "pretrained", "path": cfg.model.name_or_path}
        if untrained:
            log.warning("mode.fresh_head=true: scoring %s with an untrained %s head", cfg.model.name_or_path, cfg.task.head)
    return RunContext(cfg, accelerator, run_dir, tokenizer, model, data, labels, source, head_args)


def _language_model_context(cfg, accelerator, run_dir, offline, train_split, eval_splits) -> RunContext:
    """A causal LM from model.name_or_path and the standardised rows (not features: zero-shot prompts
    are built from rows) of the eval splits, plus the train split when demonstrations are drawn from
    it. `data.examples` holds the rows of every split loaded, `data.evals` is empty."""
    tokenizer, base_vocab = load_tokenizer(cfg.model, offline)
    splits = list(dict.fromkeys(eval_splits + ([train_split] if train_split else [])))
    with accelerator.main_process_first():
        rows, stats = load_rows(cfg, HEADS[cfg.task.head], offline, splits, train_split)
    set_seed(cfg.seed)  # a from_scratch model's random weights do not depend on what the data loading drew
    model = load_causal_lm(cfg.model, tokenizer, base_vocab, offline)
    data = TaskData("prompt", None, {}, rows, stats)
    source = {"kind": "language_model", "path": cfg.model.name_or_path}
    head_args = OmegaConf.to_container(cfg.task.head_args, resolve=True)
    return RunContext(cfg, accelerator, run_dir, tokenizer, model, data, task_labels(cfg.task), source, head_args)
