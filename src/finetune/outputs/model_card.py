"""model/README.md: a Hugging Face style model card, so an exported directory explains itself."""

from __future__ import annotations

from pathlib import Path

import yaml

PIPELINE_TASKS = {"classification": "text-classification", "entailment": "text-classification", "similarity": "text-classification"}


ADAPTER_CLASSES = {"classification": "AutoModelForSequenceClassification", "entailment": "AutoModelForSequenceClassification",
                   "similarity": "AutoModelForSequenceClassification", "span": "AutoModelForQuestionAnswering"}


def _how_to_load_adapter(manifest: dict) -> str:
    """adapter/ (finetune.models.lora): peft loads it on its base model; multiple choice needs the framework."""
    peft = manifest["peft"]
    base = peft.get("base_model") or "<the base model>"
    framework = [
        "Or with the framework (any head, multiple choice included): "
        "`python train.py mode=evaluate task=" + manifest["task"] + " model.name_or_path=<this directory>`.",
    ]
    cls = ADAPTER_CLASSES.get(manifest["head"])
    if cls is None:
        return "\n".join([
            f"A LoRA adapter (r={peft['r']}, alpha={peft['alpha']:g}, on {', '.join(peft['target_modules'])}) for `{base}`; "
            "the multiple-choice head (one score per candidate) is in head.safetensors, which only the framework reads:",
            "```python",
            "from finetune.models.task_model import load_trained",
            'model, tokenizer, manifest = load_trained("<this directory>")',
            "```",
            "The adapter alone loads on the base with `PeftModel.from_pretrained(AutoModel.from_pretrained(base), <this directory>)`.",
        ])
    labels = "" if manifest["head"] == "span" else f", num_labels={manifest['num_labels']}"
    return "\n".join([
        f"A LoRA adapter (r={peft['r']}, alpha={peft['alpha']:g}, on {', '.join(peft['target_modules'])}) with the trained head, for `{base}`:",
        "```python",
        f"from transformers import AutoTokenizer, {cls}",
        "from peft import PeftModel",
        f'base = {cls}.from_pretrained("{base}"{labels})',
        'model = PeftModel.from_pretrained(base, "<this directory>")  # the head comes with it (modules_to_save)',
        'tokenizer = AutoTokenizer.from_pretrained("<this directory>")  # holds the training input template',
        "model.config.pad_token_id = tokenizer.pad_token_id",
        "```",
        *framework,
    ])


def _how_to_load(manifest: dict) -> str:
    if (manifest.get("peft") or {}).get("sha256"):
        return _how_to_load_adapter(manifest)
    head = manifest["head"]
    if head in PIPELINE_TASKS:
        pair = head != "classification"
        example = '{"text": "A man is playing a guitar.", "text_pair": "Someone plays music."}' if pair else '"a gorgeous, witty film"'
        extra = ', function_to_apply="none"' if manifest.get("labels") is None else ""
        lines = [
            "```python",
            "from transformers import pipeline",
            f'classify = pipeline("text-classification", model="<this directory>"{extra})',
            f"print(classify({example}))",
            "```",
            "The tokenizer applies the training input format itself (its post-processor holds the template).",
        ]
        if head == "similarity" and (manifest.get("head_args") or {}).get("both_orders", True):
            lines.append("This model was trained on both sentence orders: the framework scores a pair as W·(h(a,b) + h(b,a)); "
                         "a plain `pipeline` call scores one order only.")
        return "\n".join(lines)
    return "\n".join([
        "```python",
        "from finetune.models.task_model import load_exported",
        'model, tokenizer, manifest = load_exported("<this directory>")',
        "```",
    ])


def write_model_card(model_dir: Path, manifest: dict, cfg, metrics: dict) -> Path:
    evaluation = metrics.get("eval_splits") or {}
    front = {
        "library_name": "peft" if (manifest.get("peft") or {}).get("sha256") else "transformers",
        "base_model": str(cfg.model.name_or_path),
        "tags": ["finetune", "gpt2", manifest["head"], manifest["task"]],
        "model-index": [{
            "name": f"{Path(str(cfg.model.name_or_path)).name}-{manifest['task']}",
            "results": [{
                "task": {"type": PIPELINE_TASKS.get(manifest["head"], manifest["head"])},
                "dataset": {"name": manifest["task"], "split": split},
                "metrics": [{"type": k, "value": round(float(v), 6)} for k, v in result.items() if k != "num_examples"],
            } for split, result in evaluation.items()],
        }],
    }
    train = metrics.get("train", {})
    hyper = {
        "learning rate": cfg.optim.lr, "scheduler": f"{cfg.optim.scheduler}, warmup ratio {cfg.optim.warmup_ratio}",
        "batch size (per process) x grad accumulation": f"{cfg.trainer.batch_size} x {cfg.trainer.grad_accum}",
        "weight decay": cfg.optim.weight_decay, "max length": cfg.task.max_length, "seed": cfg.seed,
        "optimizer steps": train.get("steps"), "best step": metrics.get("best_step"),
        "mixed precision": cfg.trainer.mixed_precision,
    }
    if cfg.get("peft") is not None:
        hyper["LoRA"] = (f"r={cfg.peft.r}, alpha={cfg.peft.alpha:g}, dropout={cfg.peft.dropout:g}, on {', '.join(cfg.peft.target_modules)}"
                         + ("; merged into these weights" if manifest.get("merged_adapters") else ""))
    labels = manifest.get("labels")
    body = [
        f"# {manifest['task']}: GPT-2 with a `{manifest['head']}` head",
        "",
        f"Fine-tuned from `{cfg.model.name_or_path}` on task `{manifest['task']}` with the finetune framework.",
        "",
        "## Labels",
        ", ".join(f"{i}: `{name}`" for i, name in enumerate(labels)) if labels else "One regression output (a score).",
        "",
        "## Evaluation (best checkpoint)",
        "| split | " + " | ".join(k for k in next(iter(evaluation.values()), {}) if k != "num_examples") + " | examples |",
        "|---|" + "---|" * len([k for k in next(iter(evaluation.values()), {}) if k != "num_examples"]) + "---|",
        *[f"| {split} | " + " | ".join(f"{v:.4f}" for k, v in r.items() if k != "num_examples") + f" | {r.get('num_examples')} |"
          for split, r in evaluation.items()],
        "",
        "## Hyperparameters",
        *[f"- {name}: {value}" for name, value in hyper.items()],
        "",
        "## How to load it",
        _how_to_load(manifest),
        "",
    ]
    path = Path(model_dir) / "README.md"
    path.write_text("---\n" + yaml.safe_dump(front, sort_keys=False) + "---\n\n" + "\n".join(body))
    return path
