"""LoRA adapters on the backbone with `peft`; the task head stays outside the peft model.

One mechanism for every head: `apply_lora` wraps `TaskModel.backbone` (a transformers GPT-2) in a
`peft.PeftModel`, which freezes the backbone's weights and adds trainable low-rank adapters to the
target layers. The head is the TaskModel's other module, so it trains fully, as in full
fine-tuning, and every checkpoint (accelerate's `save_state` of the whole TaskModel) holds it with
the adapters. GPT-2's projections are `transformers.Conv1D` layers (weights stored in x out), which
peft adapts with `fan_in_fan_out=True`.

A finished run exports the model twice (`finetune.modes.train`):
- `model/`: the adapters merged into the weights (`merge_and_unload`), the usual plain transformers
  directory (`GPT2ForSequenceClassification`, `GPT2ForQuestionAnswering`, or a base model plus
  head.safetensors for multiple choice);
- `adapter/`: the adapter alone in peft's format (`write_adapter`). For heads with a transformers
  class it is written for that class with the head in `modules_to_save`, so
  `PeftModel.from_pretrained(GPT2ForSequenceClassification.from_pretrained(base, num_labels=n), adapter)`
  gives the trained head too. Multiple choice has no transformers class: its adapter is for the
  base `GPT2Model` and the head lies next to it in head.safetensors (`load_adapter` reads both).

Both directories record the adapter's fingerprint (sha256 of its tensors) in finetune.json:
`adapter/` as `peft.sha256`, `model/` in `merged_adapters`. Putting an adapter on a base that
already has it merged would add its update twice, and is refused (`load_adapter`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from pathlib import Path

import torch
import transformers
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModel
from transformers.pytorch_utils import Conv1D

from finetune.errors import ConfigError, HubUnavailableError, ModelError
from finetune.models.heads import HEADS

log = logging.getLogger(__name__)

MIN_PEFT = (0, 19)
PEFT_INSTALL = 'pip install -e . (peft is a core dependency), or pip install "peft>=0.19"'
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_NAME = "default"
# peft's task types for the transformers classes our heads export to (they pick the PeftModel subclass).
TASK_TYPES = {"GPT2ForSequenceClassification": "SEQ_CLS", "GPT2ForQuestionAnswering": "QUESTION_ANS"}
ADAPTABLE = (Conv1D, torch.nn.Linear)


def require_peft():
    """The peft module, or one line saying how to install it."""
    try:
        import peft
    except ImportError:
        raise ConfigError(f"peft=lora needs the peft library, which is not installed: {PEFT_INSTALL}") from None
    version = tuple(int(part) for part in peft.__version__.split(".")[:2] if part.isdigit())
    if version < MIN_PEFT:
        raise ConfigError(f"peft {peft.__version__} is too old for peft=lora (>= 0.19 needed): {PEFT_INSTALL}")
    return peft


def has_adapters(model) -> bool:
    return hasattr(model.backbone, "peft_config")


def adaptable_layers(backbone) -> list[str]:
    """Names (last component) of the backbone layers LoRA can adapt: its Conv1D and Linear projections."""
    return sorted({name.rsplit(".", 1)[-1] for name, module in backbone.named_modules() if name and isinstance(module, ADAPTABLE)})


def check_targets(backbone, targets: list[str]) -> None:
    """Every target must name layers of the backbone (peft matches a name or a dotted suffix of it)."""
    names = [name for name, module in backbone.named_modules() if name and isinstance(module, ADAPTABLE)]
    unmatched = [t for t in targets if not any(name == t or name.endswith("." + t) for name in names)]
    if unmatched:
        raise ConfigError(
            f"peft.target_modules {unmatched} match no layer of the backbone; its adaptable layers are: "
            f"{', '.join(adaptable_layers(backbone))} (e.g. peft.target_modules=[c_attn,c_proj,c_fc])"
        )


def _settings(source) -> dict:
    """r, alpha, dropout, target_modules from cfg.peft or a manifest's `peft` record."""
    return {
        "method": source["method"] if "method" in source else "lora",
        "r": int(source["r"]),
        "alpha": float(source["alpha"]),
        "dropout": float(source["dropout"]),
        "target_modules": [str(t) for t in source["target_modules"]],
    }


def lora_config(settings: dict, **extra):
    peft = require_peft()
    return peft.LoraConfig(
        r=settings["r"], lora_alpha=settings["alpha"], lora_dropout=settings["dropout"],
        target_modules=list(settings["target_modules"]), bias="none",
        fan_in_fan_out=True,  # GPT-2's Conv1D layers store their weight transposed (in x out)
        **extra,
    )


def base_reference(model_cfg) -> str | None:
    """What an adapter's base_model_name_or_path should say: a Hub id as given, a local directory as an
    absolute path (so the adapter loads from any working directory), nothing for a random init."""
    if model_cfg.from_scratch:
        return None
    path = Path(model_cfg.name_or_path).expanduser()
    return str(path.resolve()) if path.exists() else str(model_cfg.name_or_path)


def apply_lora(task_model, peft_cfg, base_model: str | None = None):
    """Wrap `task_model.backbone` in a peft LoRA model (in place) and return the task model.

    Only the adapters of the backbone train; the head is untouched, so it stays fully trainable.
    Used for training and to rebuild a checkpoint's model before loading its state dict.
    """
    peft = require_peft()
    settings = _settings(peft_cfg)
    backbone = task_model.backbone
    if has_adapters(task_model):
        raise ModelError("the backbone already carries LoRA adapters; apply_lora wraps a plain backbone once")
    check_targets(backbone, settings["target_modules"])
    with warnings.catch_warnings():
        # peft reads `is_gradient_checkpointing`, which transformers 5.24 renamed (is_activation_checkpointing).
        warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.* is deprecated", category=FutureWarning)
        wrapped = peft.get_peft_model(backbone, lora_config(settings))
    # get_peft_model records the backbone's own name_or_path; ours says where to load the base from.
    wrapped.peft_config[ADAPTER_NAME].base_model_name_or_path = base_model
    task_model.backbone = wrapped
    return task_model


def settings_of(model) -> dict | None:
    """The `peft` record of a manifest (None without adapters): enough to rebuild the model."""
    if not has_adapters(model):
        return None
    config = model.backbone.peft_config[ADAPTER_NAME]
    targets = config.target_modules
    return {
        "method": "lora", "r": int(config.r), "alpha": float(config.lora_alpha), "dropout": float(config.lora_dropout),
        "target_modules": sorted(targets) if isinstance(targets, (set, list, tuple)) else [targets],
        "base_model": config.base_model_name_or_path,
    }


def _base_shape(config) -> dict:
    return {key: getattr(config, key, None) for key in ("model_type", "n_layer", "n_embd", "n_head", "vocab_size")}


def _fingerprint(tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for key in sorted(tensors):
        digest.update(key.encode())
        digest.update(tensors[key].detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def merged_adapters_of(directory: str | None) -> list[dict]:
    """The adapters a finetune export already has merged into its weights (from its finetune.json)."""
    if not directory:
        return []
    manifest = Path(directory) / "finetune.json"
    if not manifest.is_file():
        return []
    try:
        return list(json.loads(manifest.read_text()).get("merged_adapters") or [])
    except (OSError, ValueError):
        return []


def write_adapter(model, tokenizer, manifest: dict, out_dir: Path) -> dict:
    """adapter/: peft's adapter_config.json + adapter_model.safetensors (head included), the tokenizer
    and finetune.json. Returns the adapter's record for the merged model's manifest."""
    peft = require_peft()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    backbone, head = model.backbone, model.head
    settings = settings_of(model)
    prefix = "base_model.model."  # PeftModel -> LoraModel -> the wrapped model
    adapter = peft.get_peft_model_state_dict(backbone, adapter_name=ADAPTER_NAME)
    if head.exports_to:
        # Written for the head's transformers class: the backbone lives under its base_model_prefix
        # ("transformer"), and the head is a module to save whole (peft stores it under its own name).
        inner = getattr(transformers, head.exports_to).base_model_prefix
        tensors = {f"{prefix}{inner}.{key[len(prefix):]}": value for key, value in adapter.items()}
        tensors.update({f"{prefix}{head.export_module}.{key}": value
                        for key, value in getattr(head, head.export_module).state_dict().items()})
        extra = {"task_type": TASK_TYPES[head.exports_to], "modules_to_save": [head.export_module]}
    else:
        tensors = dict(adapter)
        extra = {}
        from finetune.models.task_model import HEAD_WEIGHTS

        save_file({k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}, str(out_dir / HEAD_WEIGHTS))
    tensors = {key: value.detach().cpu().contiguous() for key, value in tensors.items()}
    config = lora_config(settings, base_model_name_or_path=settings["base_model"], inference_mode=True, **extra)
    config.save_pretrained(str(out_dir))
    save_file(tensors, str(out_dir / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    tokenizer.save_pretrained(out_dir)
    fingerprint = _fingerprint({**tensors, **{f"head.{k}": v for k, v in head.state_dict().items()}})
    record = {**settings, "sha256": fingerprint, "base_shape": _base_shape(backbone.config)}
    (out_dir / "finetune.json").write_text(json.dumps({**manifest, "peft": record}, indent=2) + "\n")
    return record


def merge(model):
    """The task model with its adapters merged into the backbone's weights (peft's merge_and_unload,
    in place: the backbone is a plain transformers model afterwards)."""
    from finetune.models.task_model import TaskModel

    return TaskModel(model.backbone.merge_and_unload(), model.head)


def merged_record(adapter: dict) -> list[dict]:
    """`merged_adapters` of a merged export: its base's (if the base is itself a merged export) + this one."""
    this = {key: adapter[key] for key in ("sha256", "r", "alpha", "target_modules", "base_model")}
    return [*merged_adapters_of(adapter.get("base_model")), this]


def _quiet_from_pretrained(cls, name, **kwargs):
    """from_pretrained without the 'newly initialized weights' report: the adapter brings those weights."""
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        return cls.from_pretrained(name, dtype=torch.float32, **kwargs)
    finally:
        transformers.logging.set_verbosity(verbosity)


def _check_base(path: Path, base: str, record: dict, offline: bool) -> None:
    from finetune.models.backbone import _looks_like_path

    if _looks_like_path(base):
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
        shape = _base_shape(AutoConfig.from_pretrained(base))
    except (OSError, ValueError) as err:
        raise ModelError(f"adapter '{path}': its base model '{base}' could not be read ({type(err).__name__})") from err
    different = {k: (v, shape.get(k)) for k, v in expected.items() if v is not None and shape.get(k) != v}
    if different:
        raise ModelError(f"adapter '{path}' was trained on a base with " + ", ".join(f"{k}={a}" for k, (a, _) in different.items())
                         + f", but its base model '{base}' has " + ", ".join(f"{k}={b}" for k, (_, b) in different.items())
                         + ": set model.adapter_base=<the model it was trained on>")


def load_adapter(path: str | Path, base_override: str | None = None, offline: bool = False):
    """(TaskModel, tokenizer, manifest) from an adapter/ directory: its base model with the adapter
    loaded by peft itself (`PeftModel.from_pretrained`) and merged for inference."""
    from finetune.models.task_model import HEAD_WEIGHTS, MANIFEST, TaskModel, _configured_tokenizer, build_head

    peft = require_peft()
    path = Path(path)
    manifest = json.loads((path / MANIFEST).read_text())
    record = manifest.get("peft") or {}
    base = base_override or json.loads((path / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    if not base:
        raise ModelError(f"adapter '{path}' does not say which base model it adapts ({ADAPTER_CONFIG} has no "
                         f"base_model_name_or_path; trained from a random init?): set model.adapter_base=<the base model>")
    _check_base(path, base, record, offline)
    tokenizer = _configured_tokenizer(path, manifest)
    head_cls = HEADS[manifest["head"]]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.* is deprecated", category=FutureWarning)
        if head_cls.exports_to:
            hf_cls = getattr(transformers, head_cls.exports_to)
            hf_model = _quiet_from_pretrained(hf_cls, base, num_labels=2 if manifest["head"] == "span" else manifest["num_labels"])
            merged = peft.PeftModel.from_pretrained(hf_model, str(path)).merge_and_unload()
            backbone = getattr(merged, hf_cls.base_model_prefix)
            head = build_head(manifest["head"], backbone.config.n_embd, manifest["num_labels"], 0.0, manifest["head_args"])
            getattr(head, head.export_module).load_state_dict(getattr(merged, head.export_module).state_dict())
        else:
            backbone = peft.PeftModel.from_pretrained(_quiet_from_pretrained(AutoModel, base), str(path)).merge_and_unload()
            head = build_head(manifest["head"], backbone.config.n_embd, manifest["num_labels"], 0.0, manifest["head_args"])
            head.load_state_dict(load_file(str(path / HEAD_WEIGHTS)))
    backbone.config.pad_token_id = tokenizer.pad_token_id
    return TaskModel(backbone, head).eval(), tokenizer, manifest
