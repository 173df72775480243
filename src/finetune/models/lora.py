"""LoRA adapters on the backbone with `peft`; the task head stays outside the peft model.

One mechanism for every head: `apply_lora` wraps `TaskModel.backbone` (a transformers GPT-2) in a
`peft.PeftModel`, which freezes the backbone's weights and adds trainable low-rank adapters to the
target layers. The head is the TaskModel's other module, so it trains fully, as in full
fine-tuning, and every checkpoint (accelerate's `save_state` of the whole TaskModel) holds it with
the adapters. GPT-2's projections are `transformers.Conv1D` layers (weights stored in x out), which
peft adapts with `fan_in_fan_out=True`.

A finished run exports the model twice (finetune.models.artifacts): `model/` with the adapters
merged into the weights (`merge`), and `adapter/`, the adapter alone in peft's format.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from pathlib import Path

import torch
from transformers.pytorch_utils import Conv1D

from finetune.errors import ConfigError, ModelError

log = logging.getLogger(__name__)

MIN_PEFT = (0, 19)
PEFT_INSTALL = 'pip install -e . (peft is a core dependency), or pip install "peft>=0.19"'
ADAPTER_NAME = "default"
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


def base_shape(config) -> dict:
    return {key: getattr(config, key, None) for key in ("model_type", "n_layer", "n_embd", "n_head", "vocab_size")}


def fingerprint(tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for key in sorted(tensors):
        digest.update(key.encode())
        digest.update(tensors[key].detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def merge(model):
    """The task model with its adapters merged into the backbone's weights (peft's merge_and_unload,
    in place: the backbone is a plain transformers model afterwards)."""
    model.backbone = model.backbone.merge_and_unload()
    return model


