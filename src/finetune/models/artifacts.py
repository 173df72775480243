"""A trained task model on disk: the exported `model/`, the LoRA `adapter/` and `checkpoints/step-N`.

Writing and reading all three, and their file names, live here. What differs per head (the
transformers class its weights map onto, the layer that holds its own weights, peft's task type)
is asked of the head class; the manifest (finetune.json) is parsed by finetune.models.manifest.

- `model/`: heads with `exports_to` are written as that transformers class (so `pipeline(...)`
  loads them); others as the bare backbone plus head.safetensors. After LoRA the adapters are
  merged into these weights, and `merged_adapters` records them so that none is applied twice.
- `adapter/`: peft's adapter_config.json + adapter_model.safetensors. For heads with a transformers
  class it is written for that class, the head's own layer in `modules_to_save`, so
  `PeftModel.from_pretrained(<class>.from_pretrained(base), adapter)` gives the trained head too;
  otherwise it adapts the base `GPT2Model` and the head lies next to it in head.safetensors.
- `checkpoints/step-N`: accelerate's `save_state` plus the backbone config, tokenizer and manifest
  (`write_model_files`), so a checkpoint loads as a model by itself.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import torch
import transformers
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModel, AutoTokenizer

from finetune.data.formats import configure_tokenizer
from finetune.errors import HubUnavailableError, ModelError
from finetune.generation import generation_config
from finetune.models import lora
from finetune.models.backbone import looks_like_path
from finetune.models.heads import HEADS
from finetune.models.manifest import MANIFEST, Manifest, read_manifest, uses_gpt1_tokens
from finetune.models.task_model import TaskModel, build_head
from finetune.training.checkpoint import RUN_INFO as CHECKPOINT_INFO

log = logging.getLogger(__name__)

HEAD_WEIGHTS = "head.safetensors"
CHECKPOINT_WEIGHTS = "model.safetensors"  # what accelerator.save_state names the model's weights
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")  # an export has one
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
KIND_NAMES = {"checkpoint": "checkpoint", "adapter": "adapter", "exported": "exported model"}


# ---------------------------------------------------------------------------------------------- writing
def trained_input_roles(task_cfg, head_cls) -> list[str]:
    """The input roles (text, text_pair, context, ...) the task's sources give the head: a classifier
    trained on single texts then takes no pair at inference (finetune.inference), nor the reverse."""
    given = {role for source in (task_cfg.local, task_cfg.hub) if source is not None for role in source.columns}
    required, optional = head_cls.input_roles()
    return [*required, *(role for role in optional if role in given)]


def manifest_for(model: TaskModel, tokenizer, task_cfg, labels: list[str] | None) -> Manifest:
    """The manifest of a task model being trained (`peft`: the LoRA settings a checkpoint's model
    is rebuilt with before its state dict loads)."""
    head_args = task_cfg.head_args
    head_args = OmegaConf.to_container(head_args, resolve=True) if OmegaConf.is_config(head_args) else dict(head_args)
    return Manifest(
        task=task_cfg.name, head=task_cfg.head, head_args=head_args, num_labels=model.head.num_labels, labels=labels,
        max_length=task_cfg.max_length, gpt1_tokens=uses_gpt1_tokens(tokenizer),
        input_roles=trained_input_roles(task_cfg, type(model.head)), peft=lora.settings_of(model),
    )


def write_model_files(model: TaskModel, tokenizer, manifest: Manifest, out_dir: Path) -> None:
    """Backbone config, tokenizer and manifest: with a checkpoint's weights, a loadable model."""
    out_dir = Path(out_dir)
    model.backbone.config.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    manifest.write(out_dir)


def export(model: TaskModel, tokenizer, task_cfg, labels: list[str] | None, out_dir: Path,
           merged_adapters: list[dict] | None = None) -> Manifest:
    """Save weights, tokenizer (with its input template) and a manifest to reload the task model."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    head, backbone = model.head, model.backbone
    config = backbone.config
    if labels is not None and head.needs_labels:
        config.id2label = dict(enumerate(labels))
        config.label2id = {name: i for i, name in enumerate(labels)}
    if head.exports_to:
        head.export_config(config)
        hf_model = getattr(transformers, head.exports_to)(config)
        hf_model.transformer.load_state_dict(backbone.state_dict())
        if head.export_module:
            getattr(hf_model, head.export_module).load_state_dict(getattr(head, head.export_module).state_dict())
        if not head.has_own_weights:  # the output layer is the token embedding
            hf_model.tie_weights()
        if head.generates:  # the generation config pipeline("text-generation") reads
            hf_model.generation_config = generation_config(task_cfg.head_args.get("generation"), tokenizer)
        hf_model.save_pretrained(out_dir)
    else:
        backbone.save_pretrained(out_dir)
        save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(out_dir / HEAD_WEIGHTS))
    tokenizer.save_pretrained(out_dir)
    manifest = manifest_for(model, tokenizer, task_cfg, labels).replace(merged_adapters=list(merged_adapters or []))
    manifest.write(out_dir)
    return manifest


def write_adapter(model: TaskModel, tokenizer, manifest: Manifest, out_dir: Path) -> dict:
    """adapter/: peft's adapter_config.json + adapter_model.safetensors (the head's layer included, or
    head.safetensors beside it), the tokenizer and finetune.json. Returns the adapter's record for the
    merged model's manifest."""
    peft = lora.require_peft()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    backbone, head = model.backbone, model.head
    settings = lora.settings_of(model)
    prefix = "base_model.model."  # PeftModel -> LoraModel -> the wrapped model
    adapter = peft.get_peft_model_state_dict(backbone, adapter_name=lora.ADAPTER_NAME)
    extra = {}
    if head.exports_to:
        # Written for the head's transformers class: the backbone lives under its base_model_prefix
        # ("transformer"), and the head's own layer is a module to save whole (peft stores it under its name).
        inner = getattr(transformers, head.exports_to).base_model_prefix
        tensors = {f"{prefix}{inner}.{key[len(prefix):]}": value for key, value in adapter.items()}
        extra["task_type"] = head.peft_task_type
        if head.export_module:
            tensors.update({f"{prefix}{head.export_module}.{key}": value
                            for key, value in getattr(head, head.export_module).state_dict().items()})
            extra["modules_to_save"] = [head.export_module]
    else:
        tensors = dict(adapter)
        save_file({k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}, str(out_dir / HEAD_WEIGHTS))
    tensors = {key: value.detach().cpu().contiguous() for key, value in tensors.items()}
    config = lora.lora_config(settings, base_model_name_or_path=settings["base_model"], inference_mode=True, **extra)
    config.save_pretrained(str(out_dir))
    save_file(tensors, str(out_dir / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    tokenizer.save_pretrained(out_dir)
    digest = lora.fingerprint({**tensors, **{f"head.{k}": v for k, v in head.state_dict().items()}})
    record = {**settings, "sha256": digest, "base_shape": lora.base_shape(backbone.config)}
    manifest.replace(peft=record).write(out_dir)
    return record


def merged_adapters_of(directory: str | None) -> list[dict]:
    """The adapters a finetune export already has merged into its weights (from its finetune.json)."""
    manifest = read_manifest(directory) if directory and Path(directory).is_dir() else None
    return list(manifest.merged_adapters) if manifest is not None else []


def merged_record(adapter: dict) -> list[dict]:
    """`merged_adapters` of a merged export: its base's (if the base is itself a merged export) + this one."""
    this = {key: adapter[key] for key in ("sha256", "r", "alpha", "target_modules", "base_model")}
    return [*merged_adapters_of(adapter.get("base_model")), this]


# ---------------------------------------------------------------------------------------------- reading
def configured_tokenizer(model_dir: Path, manifest: Manifest):
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    gpt1 = manifest.gpt1_tokens if manifest.gpt1_tokens is not None else uses_gpt1_tokens(tokenizer)
    configure_tokenizer(tokenizer, gpt1)
    return tokenizer


def exported_class(manifest: Manifest) -> str:
    """The transformers class an exported directory's weights load into: the head's `exports_to`, or
    the bare backbone (its head then lives in head.safetensors)."""
    return HEADS[manifest.head].exports_to or "AutoModel"


def _head_of(manifest: Manifest, backbone):
    return build_head(manifest.head, backbone.config.n_embd, manifest.num_labels, 0.0, manifest.head_args)


def task_model_from_export(loaded, manifest: Manifest, model_dir: str | Path) -> TaskModel:
    """The task model of an exported directory, built around the transformers model loaded from it
    (an `exported_class(manifest)` instance): its backbone is used as it is, the head's weights are
    read from its own layer (`export_module`) or from head.safetensors. `finetune.load` and the
    registered pipelines (finetune.pipelines) both build their model here."""
    head_cls = HEADS[manifest.head]
    backbone = loaded.transformer if head_cls.exports_to else loaded
    head = _head_of(manifest, backbone)
    if not head_cls.exports_to:
        head.load_state_dict(load_file(str(Path(model_dir) / HEAD_WEIGHTS)))
    elif head.export_module:  # the LM head has no layer of its own (tied to the token embeddings)
        getattr(head, head.export_module).load_state_dict(getattr(loaded, head.export_module).state_dict())
    head.to(next(backbone.parameters()).device)
    return TaskModel(backbone, head).eval()


def load_exported(model_dir: str | Path) -> tuple[TaskModel, object, Manifest]:
    """Reload an exported directory as (TaskModel, tokenizer, manifest) for framework inference."""
    model_dir = Path(model_dir)
    manifest = read_manifest(model_dir, f"'{model_dir}'")
    tokenizer = configured_tokenizer(model_dir, manifest)
    loaded = getattr(transformers, exported_class(manifest)).from_pretrained(model_dir, dtype=torch.float32)
    return task_model_from_export(loaded, manifest, model_dir), tokenizer, manifest


def load_checkpoint_model(checkpoint_dir: str | Path) -> tuple[TaskModel, object, Manifest]:
    """Rebuild the task model of a training checkpoint (`checkpoints/step-N`) from its own files."""
    checkpoint_dir = Path(checkpoint_dir)
    manifest = read_manifest(checkpoint_dir, f"'{checkpoint_dir}'")
    tokenizer = configured_tokenizer(checkpoint_dir, manifest)
    backbone = AutoModel.from_config(AutoConfig.from_pretrained(checkpoint_dir), dtype=torch.float32)
    model = TaskModel(backbone, _head_of(manifest, backbone))
    if manifest.peft:
        lora.apply_lora(model, manifest.peft, base_model=manifest.peft.get("base_model"))
    model.load_state_dict(load_file(str(checkpoint_dir / CHECKPOINT_WEIGHTS)))
    return model.eval(), tokenizer, manifest


def _quiet_from_pretrained(cls, name, **kwargs):
    """from_pretrained without the 'newly initialized weights' report: the adapter brings those weights."""
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        return cls.from_pretrained(name, dtype=torch.float32, **kwargs)
    finally:
        transformers.logging.set_verbosity(verbosity)


def _check_base(path: Path, base: str, record: dict, offline: bool) -> None:
    if looks_like_path(base):
        if not Path(base).expanduser().is_dir():
            raise ModelError(f"adapter '{path}': its base model '{base}' does not exist; set model.adapter_base=<the base model directory>")
    elif offline:
        raise HubUnavailableError(f"adapter '{path}': its base model '{base}' must come from the Hugging Face Hub, which is not "
                                  f"reachable (offline); set model.adapter_base=<local save_pretrained directory>")
    if record.get("sha256") and any(m.get("sha256") == record["sha256"] for m in merged_adapters_of(base)):
        raise ModelError(f"adapter '{path}' is already merged into '{base}' (its finetune.json lists it): applying it again would "
                         f"add its update twice; evaluate '{base}' by itself, or set model.adapter_base to the adapter's own base")
    expected = record.get("base_shape") or {}
    try:
        shape = lora.base_shape(AutoConfig.from_pretrained(base))
    except (OSError, ValueError) as err:
        raise ModelError(f"adapter '{path}': its base model '{base}' could not be read ({type(err).__name__})") from err
    different = {k: (v, shape.get(k)) for k, v in expected.items() if v is not None and shape.get(k) != v}
    if different:
        raise ModelError(f"adapter '{path}' was trained on a base with " + ", ".join(f"{k}={a}" for k, (a, _) in different.items())
                         + f", but its base model '{base}' has " + ", ".join(f"{k}={b}" for k, (_, b) in different.items())
                         + ": set model.adapter_base=<the model it was trained on>")


def load_adapter(path: str | Path, base_override: str | None = None, offline: bool = False) -> tuple[TaskModel, object, Manifest]:
    """(TaskModel, tokenizer, manifest) from an adapter/ directory: its base model with the adapter
    loaded by peft itself (`PeftModel.from_pretrained`) and merged for inference."""
    peft = lora.require_peft()
    path = Path(path)
    manifest = read_manifest(path, f"adapter '{path}'")
    base = base_override or json.loads((path / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    if not base:
        raise ModelError(f"adapter '{path}' does not say which base model it adapts ({ADAPTER_CONFIG} has no "
                         f"base_model_name_or_path; trained from a random init?): set model.adapter_base=<the base model>")
    _check_base(path, base, manifest.peft or {}, offline)
    tokenizer = configured_tokenizer(path, manifest)
    head_cls = HEADS[manifest.head]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.* is deprecated", category=FutureWarning)
        if head_cls.exports_to:
            hf_cls = getattr(transformers, head_cls.exports_to)
            labels = {"num_labels": head_cls.transformers_num_labels(manifest.num_labels)} if head_cls.export_module else {}
            merged = peft.PeftModel.from_pretrained(_quiet_from_pretrained(hf_cls, base, **labels), str(path)).merge_and_unload()
            backbone = getattr(merged, hf_cls.base_model_prefix)
            head = _head_of(manifest, backbone)
            if head.export_module:
                getattr(head, head.export_module).load_state_dict(getattr(merged, head.export_module).state_dict())
        else:
            backbone = peft.PeftModel.from_pretrained(_quiet_from_pretrained(AutoModel, base), str(path)).merge_and_unload()
            head = _head_of(manifest, backbone)
            head.load_state_dict(load_file(str(path / HEAD_WEIGHTS)))
    backbone.config.pad_token_id = tokenizer.pad_token_id
    return TaskModel(backbone, head).eval(), tokenizer, manifest


def trained_kind(path: Path) -> str | None:
    """'checkpoint', 'adapter' (a run's adapter/), 'exported' or None (not a fine-tuned model directory)."""
    if (path / CHECKPOINT_INFO).is_file():
        return "checkpoint"
    if (path / ADAPTER_CONFIG).is_file() and (path / MANIFEST).is_file():
        return "adapter"
    if (path / MANIFEST).is_file():
        return "exported"
    return None


def trained_manifest(path: Path, what: str) -> tuple[str, Manifest] | None:
    """(kind, manifest) of a fine-tuned model directory (see `trained_kind`); None when `path` is not
    one. A directory that is one but lacks its weights or manifest, or whose head this version does
    not know, is a ModelError naming `what` (e.g. "model.name_or_path '<dir>'")."""
    kind = trained_kind(path) if path.is_dir() else None
    if kind is None:
        return None
    weights = {"checkpoint": [CHECKPOINT_WEIGHTS], "adapter": [ADAPTER_WEIGHTS]}.get(kind, list(WEIGHT_FILES))
    if not any((path / w).is_file() for w in weights):
        raise ModelError(f"{what} has no weights ({' or '.join(weights)}): it is not a complete "
                         f"{KIND_NAMES[kind]} directory")
    if not (path / MANIFEST).is_file():
        raise ModelError(f"{what} is a checkpoint without {MANIFEST} (written by an older version): use the run's model/ directory")
    manifest = read_manifest(path, what)
    if manifest.head not in HEADS:
        raise ModelError(f"{what} has a '{manifest.head}' head, which this version of finetune does not know "
                         f"(it knows {', '.join(HEADS)})")
    return kind, manifest


def load_trained(path: str | Path, adapter_base: str | None = None, offline: bool = False) -> tuple[TaskModel, object, Manifest]:
    """A checkpoint, an exported model/ or an adapter/ (on its base, or on `adapter_base`)."""
    path = Path(path)
    kind = trained_kind(path)
    if kind == "checkpoint":
        return load_checkpoint_model(path)
    if kind == "adapter":
        return load_adapter(path, adapter_base, offline)
    return load_exported(path)


def open_trained(path: Path, what: str, adapter_base: str | None = None, offline: bool = False) -> tuple[TaskModel, object, Manifest]:
    """`load_trained`, with unreadable or incomplete files reported as one ModelError line."""
    try:
        return load_trained(path, adapter_base=adapter_base, offline=offline)
    except (OSError, ValueError, RuntimeError, KeyError) as err:
        first = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
        raise ModelError(f"{what}: could not load the fine-tuned model ({type(err).__name__}: {first}); "
                         f"its files may be corrupt or incomplete") from err
