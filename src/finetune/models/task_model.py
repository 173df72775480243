"""The trainable model (backbone + head), and its export to a directory `transformers` can load."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModel, AutoTokenizer
import transformers

from finetune.models.heads import HEADS, Head

MANIFEST = "finetune.json"
HEAD_WEIGHTS = "head.safetensors"


class TaskModel(nn.Module):
    def __init__(self, backbone: nn.Module, head: Head):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, labels=None, **batch):
        logits = self.head(self.backbone, batch)
        loss = self.head.loss(logits, labels) if labels is not None else None
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


def export(model: TaskModel, tokenizer, task_cfg, labels: list[str] | None, out_dir: Path) -> None:
    """Save weights, tokenizer (with its input template) and a manifest to reload the task model.

    Heads with `exports_to` are written as that transformers class, so `pipeline(...)` loads them.
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
    manifest = {
        "task": task_cfg.name,
        "head": task_cfg.head,
        "head_args": dict(task_cfg.head_args),
        "num_labels": head.num_labels,
        "labels": labels,
        "max_length": task_cfg.max_length,
    }
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def load_exported(model_dir: str | Path) -> tuple[TaskModel, object, dict]:
    """Reload an exported directory as (TaskModel, tokenizer, manifest) for framework inference."""
    model_dir = Path(model_dir)
    manifest = json.loads((model_dir / MANIFEST).read_text())
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
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
