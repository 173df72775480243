"""The trainable model (backbone + head), and its export to a directory `transformers` can load."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file, save_file
from torch import nn
import transformers
from transformers import AutoConfig, AutoModel, AutoTokenizer

from finetune.data.formats import GPT1_TOKENS, configure_tokenizer
from finetune.errors import ModelError
from finetune.generation import generation_config
from finetune.models.heads import HEADS, Head, lm_loss_sum, lm_target_count, skip_padding_check
from finetune.models.lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS, apply_lora, load_adapter, settings_of
from finetune.training.checkpoint import RUN_INFO as CHECKPOINT_INFO

MANIFEST = "finetune.json"
HEAD_WEIGHTS = "head.safetensors"
CHECKPOINT_WEIGHTS = "model.safetensors"  # what accelerator.save_state names the model's weights
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")  # an export has one


class TaskModel(nn.Module):
    """Backbone + head. The loss is a sum over the batch's units divided by `loss_normalizers`
    (the units of the whole optimizer step, see finetune.training.loop); without normalizers it
    is the batch mean.

    With `aux_lm_weight` (GPT-1's λ) > 0, training adds λ times the LM loss over the real tokens of
    every sequence the head read (each multiple-choice candidate, both orders of a pair, every span
    window; never a pad), a token mean over the whole step like the task loss; `loss_terms` then
    holds both parts (logged as train/task_loss and train/lm_loss). The LM head is the tied
    embedding matrix, so nothing is added to the model or its export.
    """

    def __init__(self, backbone: nn.Module, head: Head, aux_lm_weight: float = 0.0):
        super().__init__()
        skip_padding_check(backbone)
        self.backbone = backbone
        self.head = head
        self.aux_lm_weight = float(aux_lm_weight)

    def loss_counts(self, batch) -> dict:
        """Units each loss term averages over: the task loss over examples (span QA: windows; the
        lm head: predicted tokens), the auxiliary LM loss over the real next-token targets of every
        sequence read."""
        counts = {"task": self.head.loss_units(batch["labels"])}
        if self.aux_lm_weight > 0:
            counts["lm"] = sum(lm_target_count(mask) for mask in self.head.sequence_masks(batch))
        return counts

    def forward(self, labels=None, loss_normalizers=None, **batch):
        reads = [] if self.aux_lm_weight > 0 and labels is not None else None
        logits = self.head(self.backbone, batch, reads)
        if labels is None:
            return {"loss": None, "logits": logits}
        normalizers = loss_normalizers or self.loss_counts({**batch, "labels": labels})
        loss = self.head.loss(logits, labels, reduction="sum") / normalizers["task"]
        if reads is None:
            return {"loss": loss, "logits": logits}
        lm_loss = lm_loss_sum(self.backbone, reads) / normalizers["lm"]
        return {"loss": loss + self.aux_lm_weight * lm_loss, "logits": logits,
                "loss_terms": {"task_loss": loss, "lm_loss": lm_loss}}


def build_head(name: str, hidden_size: int, num_labels: int, dropout: float, args: dict,
               init_std: float | None = None) -> Head:
    """`init_std`: draw the head's linear weights from N(0, init_std) with zero biases, as GPT-2
    initialises its own layers and transformers its task heads (config.initializer_range)."""
    head = HEADS[name](hidden_size, num_labels, dropout, args)
    if init_std is not None:
        for module in head.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, mean=0.0, std=init_std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
    return head


def uses_gpt1_tokens(tokenizer) -> bool:
    return GPT1_TOKENS["start"] in tokenizer.get_vocab()


def trained_input_roles(task_cfg) -> list[str]:
    """The input roles (text, text_pair, context, ...) the task's sources give the head: a classifier
    trained on single texts then takes no pair at inference (finetune.inference), nor the reverse."""
    head_cls = HEADS[task_cfg.head]
    given = {role for source in (task_cfg.local, task_cfg.hub) if source is not None for role in source.columns}
    return [role for role in head_cls.required_roles + head_cls.optional_roles
            if role not in ("id", "label", "answers") and (role in head_cls.required_roles or role in given)]


def manifest_for(model: TaskModel, tokenizer, task_cfg, labels: list[str] | None) -> dict:
    """What a directory needs besides weights to rebuild the task model and its input format
    (`peft`: the LoRA settings a checkpoint's model is rebuilt with before its state dict loads)."""
    return {
        "task": task_cfg.name,
        "head": task_cfg.head,
        "head_args": OmegaConf.to_container(task_cfg.head_args, resolve=True) if isinstance(task_cfg.head_args, DictConfig)
        else dict(task_cfg.head_args),
        "num_labels": model.head.num_labels,
        "labels": labels,
        "max_length": task_cfg.max_length,
        "gpt1_tokens": uses_gpt1_tokens(tokenizer),
        "input_roles": trained_input_roles(task_cfg),
        "peft": settings_of(model),
    }


def write_model_files(model: TaskModel, tokenizer, manifest: dict, out_dir: Path) -> None:
    """Backbone config, tokenizer and manifest: with a checkpoint's weights, a loadable model."""
    out_dir = Path(out_dir)
    model.backbone.config.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def export(model: TaskModel, tokenizer, task_cfg, labels: list[str] | None, out_dir: Path,
           merged_adapters: list[dict] | None = None) -> dict:
    """Save weights, tokenizer (with its input template) and a manifest to reload the task model.

    Heads with `exports_to` are written as that transformers class, so `pipeline(...)` loads them.
    `merged_adapters`: the LoRA adapters merged into these weights (finetune.models.lora), recorded
    so that none is applied twice. Returns the manifest.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    head, backbone = model.head, model.backbone
    config = backbone.config
    if labels is not None and not head.language_model:
        config.id2label = dict(enumerate(labels))
        config.label2id = {name: i for i, name in enumerate(labels)}
    if head.exports_to:
        head.export_config(config)
        hf_model = getattr(transformers, head.exports_to)(config)
        hf_model.transformer.load_state_dict(backbone.state_dict())
        if head.export_module:
            getattr(hf_model, head.export_module).load_state_dict(getattr(head, head.export_module).state_dict())
        if head.language_model:  # the generation config pipeline("text-generation") reads
            hf_model.tie_weights()
            hf_model.generation_config = generation_config(task_cfg.head_args.get("generation"), tokenizer)
        hf_model.save_pretrained(out_dir)
    else:
        backbone.save_pretrained(out_dir)
        save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(out_dir / HEAD_WEIGHTS))
    tokenizer.save_pretrained(out_dir)
    manifest = manifest_for(model, tokenizer, task_cfg, labels)
    if merged_adapters:
        manifest["merged_adapters"] = merged_adapters
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _configured_tokenizer(model_dir: Path, manifest: dict):
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    gpt1 = manifest.get("gpt1_tokens", uses_gpt1_tokens(tokenizer))
    configure_tokenizer(tokenizer, gpt1)
    return tokenizer


def exported_class(manifest: dict) -> str:
    """The transformers class an exported directory's weights load into: the head's `exports_to`, or
    the bare backbone (its head then lives in head.safetensors)."""
    return HEADS[manifest["head"]].exports_to or "AutoModel"


def task_model_from_export(loaded, manifest: dict, model_dir: str | Path) -> TaskModel:
    """The task model of an exported directory, built around the transformers model loaded from it
    (an `exported_class(manifest)` instance): its backbone is used as it is, the head's weights are
    read from its head layer (`export_module`) or from head.safetensors. `finetune.load` and the
    registered pipelines (finetune.pipelines) both build their model here."""
    head_cls = HEADS[manifest["head"]]
    backbone = loaded.transformer if head_cls.exports_to else loaded
    head = build_head(manifest["head"], backbone.config.n_embd, manifest["num_labels"], 0.0, manifest["head_args"])
    if head_cls.exports_to:
        if head.export_module:  # the LM head has no layer of its own (tied to the token embeddings)
            getattr(head, head.export_module).load_state_dict(getattr(loaded, head.export_module).state_dict())
    else:
        head.load_state_dict(load_file(str(Path(model_dir) / HEAD_WEIGHTS)))
    head.to(next(backbone.parameters()).device)
    return TaskModel(backbone, head).eval()


def load_exported(model_dir: str | Path) -> tuple[TaskModel, object, dict]:
    """Reload an exported directory as (TaskModel, tokenizer, manifest) for framework inference."""
    model_dir = Path(model_dir)
    manifest = json.loads((model_dir / MANIFEST).read_text())
    tokenizer = _configured_tokenizer(model_dir, manifest)
    loaded = getattr(transformers, exported_class(manifest)).from_pretrained(model_dir, dtype=torch.float32)
    return task_model_from_export(loaded, manifest, model_dir), tokenizer, manifest


def load_checkpoint_model(checkpoint_dir: str | Path) -> tuple[TaskModel, object, dict]:
    """Rebuild the task model of a training checkpoint (`checkpoints/step-N`) from its own files."""
    checkpoint_dir = Path(checkpoint_dir)
    manifest = json.loads((checkpoint_dir / MANIFEST).read_text())
    tokenizer = _configured_tokenizer(checkpoint_dir, manifest)
    config = AutoConfig.from_pretrained(checkpoint_dir)
    backbone = AutoModel.from_config(config, dtype=torch.float32)
    head = build_head(manifest["head"], config.n_embd, manifest["num_labels"], 0.0, manifest["head_args"])
    model = TaskModel(backbone, head)
    if manifest.get("peft"):
        apply_lora(model, manifest["peft"], base_model=manifest["peft"].get("base_model"))
    model.load_state_dict(load_file(str(checkpoint_dir / CHECKPOINT_WEIGHTS)))
    return model.eval(), tokenizer, manifest


KIND_NAMES = {"checkpoint": "checkpoint", "adapter": "adapter", "exported": "exported model"}


def trained_kind(path: Path) -> str | None:
    """'checkpoint', 'adapter' (a run's adapter/), 'exported' or None (not a fine-tuned model directory)."""
    if (path / CHECKPOINT_INFO).is_file():
        return "checkpoint"
    if (path / ADAPTER_CONFIG).is_file() and (path / MANIFEST).is_file():
        return "adapter"
    if (path / MANIFEST).is_file():
        return "exported"
    return None


def load_trained(path: str | Path, adapter_base: str | None = None, offline: bool = False) -> tuple[TaskModel, object, dict]:
    """A checkpoint, an exported model/ or an adapter/ (on its base, or on `adapter_base`)."""
    path = Path(path)
    kind = trained_kind(path)
    if kind == "checkpoint":
        return load_checkpoint_model(path)
    if kind == "adapter":
        return load_adapter(path, adapter_base, offline)
    return load_exported(path)


def trained_manifest(path: Path, what: str) -> tuple[str, dict] | None:
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
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError) as err:
        raise ModelError(f"{what}: {MANIFEST} is not readable JSON ({err})") from err
    if manifest.get("head") not in HEADS:
        raise ModelError(f"{what} has a '{manifest.get('head')}' head, which this version of finetune does not know "
                         f"(it knows {', '.join(HEADS)})")
    return kind, manifest


def open_trained(path: Path, what: str, adapter_base: str | None = None, offline: bool = False) -> tuple[TaskModel, object, dict]:
    """`load_trained`, with unreadable or incomplete files reported as one ModelError line."""
    try:
        return load_trained(path, adapter_base=adapter_base, offline=offline)
    except (OSError, ValueError, RuntimeError, KeyError) as err:
        first = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
        raise ModelError(f"{what}: could not load the fine-tuned model ({type(err).__name__}: {first}); "
                         f"its files may be corrupt or incomplete") from err
