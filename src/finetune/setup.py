"""The setup every mode shares: Accelerator, tokenizer, data and model from a validated config.

A mode (finetune.modes) says what it needs, never which mode it is: the splits to load, whether the
model is a pretrained backbone with a new head (`trained=False`: training) or a fine-tuned model
(`trained=True`: an exported `model/` directory or a `checkpoints/step-N` directory), and which
splits may come without labels.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed
from omegaconf import OmegaConf, open_dict

from finetune.data.pipeline import TaskData, load_rows, prepare
from finetune.errors import ModelError
from finetune.hub import set_offline_mode
from finetune.models.backbone import (
    check_backbone_for_task, enable_activation_checkpointing, load_backbone, load_causal_lm, load_tokenizer,
)
from finetune.models.heads import HEADS
from finetune.models.lora import apply_lora, base_reference
from finetune.models.task_model import MANIFEST, TaskModel, build_head, open_trained, trained_manifest
from finetune.training.allocator import configure_host_allocator

log = logging.getLogger("finetune")


@dataclass(frozen=True)
class RunContext:
    cfg: object
    accelerator: Accelerator
    run_dir: Path
    tokenizer: object
    model: TaskModel  # language_model_setup: a causal LM (GPT2LMHeadModel)
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


def check_trained_for_task(manifest: dict, task, path: str) -> None:
    """A fine-tuned model scores a task only with the head and labels it was trained with (a language
    model: any language-modelling task)."""
    labels = task_labels(task)
    theirs = manifest.get("labels")
    language_model = HEADS[task.head].language_model  # a language model scores any text: only the head must match
    if manifest.get("head") == task.head and (theirs == labels or language_model):
        return
    def describe(head, names):
        if head in HEADS and HEADS[head].language_model:
            return f"a '{head}' head (a language model)"
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
    saved_args = manifest.get("head_args") or {}
    kept = HEADS[cfg.task.head].trained_args
    if kept is not None:
        saved_args = {**OmegaConf.to_container(cfg.task.head_args, resolve=True), **{k: saved_args[k] for k in kept if k in saved_args}}
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
    head_cls = HEADS[cfg.task.head]
    loaded = _trained_model(cfg, offline) if trained else None
    # A pretrained LM is complete for the lm head (its head is the tied embedding): nothing untrained to warn about.
    complete = head_cls.language_model
    if trained and loaded is None and not cfg.mode.fresh_head and not complete:
        name = cfg.model.name_or_path
        if cfg.model.from_scratch:
            what = f"model '{name}' is a new random model (model.from_scratch=true), not a fine-tuned one"
        elif not Path(name).expanduser().exists():
            what = f"model.name_or_path '{name}' does not exist as a directory, so it is not a fine-tuned model"
        else:
            what = f"model.name_or_path '{name}' is not a fine-tuned model (no {MANIFEST})"
        raise ModelError(
            f"{what}: evaluating an untrained head is almost always a mistake; pass a run's model/ or "
            f"checkpoints/step-N directory as model.name_or_path, or set mode.fresh_head=true"
        )
    if loaded is not None:
        model, tokenizer, source = loaded
    else:
        tokenizer, base_vocab = load_tokenizer(cfg.model, offline)
    with accelerator.main_process_first():
        data = prepare(cfg, tokenizer, head_cls, offline, train_split, eval_splits, unlabelled_ok)
    if loaded is None:
        model = _pretrained_model(cfg, tokenizer, base_vocab, offline, labels)
        source = {"kind": "fresh_head" if trained and not complete else "pretrained", "path": cfg.model.name_or_path}
        if trained and not complete:
            log.warning("mode.fresh_head=true: scoring %s with an untrained %s head", cfg.model.name_or_path, cfg.task.head)
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    return RunContext(cfg, accelerator, run_dir, tokenizer, model, data, labels, source)


def language_model_setup(cfg, *, eval_splits: list[str], train_split: str | None) -> RunContext:
    """What zero-shot scoring runs on: Accelerator, tokenizer, a causal LM from model.name_or_path, and
    the standardised rows (not features: prompts are built from rows) of the eval splits, plus the
    train split when demonstrations are drawn from it. `data.examples` holds the rows of every split
    loaded, `data.evals` is empty. Writes config.yaml once all of it loaded."""
    quiet_library_progress_bars()
    run_dir = Path(cfg.paths.output_dir)
    offline = set_offline_mode(cfg.offline)
    accelerator = make_accelerator(cfg, run_dir)
    set_seed(cfg.seed)
    tokenizer, base_vocab = load_tokenizer(cfg.model, offline)
    splits = list(dict.fromkeys(eval_splits + ([train_split] if train_split else [])))
    with accelerator.main_process_first():
        rows, stats = load_rows(cfg, HEADS[cfg.task.head], offline, splits, train_split)
    set_seed(cfg.seed)  # a from_scratch model's random weights do not depend on what the data loading drew
    model = load_causal_lm(cfg.model, tokenizer, base_vocab, offline)
    data = TaskData("prompt", None, {}, rows, stats)
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    source = {"kind": "language_model", "path": cfg.model.name_or_path}
    return RunContext(cfg, accelerator, run_dir, tokenizer, model, data, task_labels(cfg.task), source)
