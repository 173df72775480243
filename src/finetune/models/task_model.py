"""The trainable model (backbone + head), and its export to a directory `transformers` can load."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
import transformers
from transformers import AutoConfig, AutoModel, AutoTokenizer

from finetune.data.formats import GPT1_TOKENS, configure_tokenizer
from finetune.models.heads import HEADS, Head, skip_padding_check
from finetune.models.lora import ADAPTER_CONFIG, apply_lora, load_adapter, settings_of
from finetune.training.checkpoint import RUN_INFO as CHECKPOINT_INFO

MANIFEST = "finetune.json"
HEAD_WEIGHTS = "head.safetensors"
CHECKPOINT_WEIGHTS = "model.safetensors"  # what accelerator.save_state names the model's weights


class TaskModel(nn.Module):
    """Backbone + head. The loss is a sum over the batch's units divided by `loss_normalizers`
    (the units of the whole optimizer step, see finetune.training.loop); without normalizers it
    is the batch mean."""

    def __init__(self, backbone: nn.Module, head: Head):
        super().__init__()
        skip_padding_check(backbone)
        self.backbone = backbone
        self.head = head

    def loss_counts(self, batch) -> dict:
        """Units each loss term averages over: the task loss over examples (span QA: windows)."""
        return {"task": len(batch["labels"])}

    def forward(self, labels=None, loss_normalizers=None, **batch):
        logits = self.head(self.backbone, batch)
        if labels is None:
            return {"loss": None, "logits": logits}
        normalizers = loss_normalizers or self.loss_counts({**batch, "labels": labels})
        loss = self.head.loss(logits, labels, reduction="sum") / normalizers["task"]
        return {"loss": loss, "logits": logits}


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


def manifest_for(model: TaskModel, tokenizer, task_cfg, labels: list[str] | None) -> dict:
    """What a directory needs besides weights to rebuild the task model and its input format
    (`peft`: the LoRA settings a checkpoint's model is rebuilt with before its state dict loads)."""
    return {
        "task": task_cfg.name,
        "head": task_cfg.head,
        "head_args": dict(task_cfg.head_args),
        "num_labels": model.head.num_labels,
        "labels": labels,
        "max_length": task_cfg.max_length,
        "gpt1_tokens": uses_gpt1_tokens(tokenizer),
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
    if labels is not None:
        config.id2label = dict(enumerate(labels))
        config.label2id = {name: i for i, name in enumerate(labels)}
    if head.exports_to:
        head.export_config(config)
        hf_model = getattr(transformers, head.exports_to)(config)
        hf_model.transformer.load_state_dict(backbone.state_dict())
        getattr(hf_model, head.export_module).load_state_dict(getattr(head, head.export_module).state_dict())
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


def load_exported(model_dir: str | Path) -> tuple[TaskModel, object, dict]:
    """Reload an exported directory as (TaskModel, tokenizer, manifest) for framework inference."""
    model_dir = Path(model_dir)
    manifest = json.loads((model_dir / MANIFEST).read_text())
    tokenizer = _configured_tokenizer(model_dir, manifest)
    head_cls = HEADS[manifest["head"]]
    if head_cls.exports_to:
        hf_model = getattr(transformers, head_cls.exports_to).from_pretrained(model_dir, dtype=torch.float32)
        backbone = hf_model.transformer
        head = build_head(manifest["head"], backbone.config.n_embd, manifest["num_labels"], 0.0, manifest["head_args"])
        getattr(head, head.export_module).load_state_dict(getattr(hf_model, head.export_module).state_dict())
    else:
        backbone = AutoModel.from_pretrained(model_dir, dtype=torch.float32)
        head = build_head(manifest["head"], backbone.config.n_embd, manifest["num_labels"], 0.0, manifest["head_args"])
        head.load_state_dict(load_file(str(model_dir / HEAD_WEIGHTS)))
    return TaskModel(backbone, head).eval(), tokenizer, manifest


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
