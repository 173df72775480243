"""model/README.md: a Hugging Face style model card, so an exported directory explains itself.

The text that differs per head (an example input, what a prediction looks like, whether
transformers' own pipeline reproduces the framework, how an adapter loads) is asked of the head
class (finetune.models.heads.base.Head, its `card_*` methods); this module lays it out.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from finetune.models.heads import HEADS


def plain_pipeline_agrees(manifest) -> bool:
    """Does transformers' own pipeline on the directory give the framework's predictions?"""
    return HEADS[manifest["head"]].plain_pipeline(manifest) is not None


def _framework_forms(head_cls, manifest) -> list[str]:
    example = head_cls.card_example(manifest)
    which = "either form predicts" if head_cls.pipeline_task else "this predicts"
    lines = [
        f"With the finetune package installed, {which} exactly what the framework's evaluation and "
        "`mode=predict` compute (the tokenizer's input template" + head_cls.card_framework_steps(manifest) + "):",
        "```python",
        "import finetune",
        "",
        'predictor = finetune.load("<this directory>")',
        f"print(predictor.predict({example}))",
        f"print(predictor.predict([{example}, {example}]))  # a list: batched, one prediction each",
        "```",
    ]
    if head_cls.pipeline_task:
        lines += [
            "```python",
            "import finetune  # registers the finetune pipelines with transformers",
            "from transformers import pipeline",
            "",
            f'pipe = pipeline("{head_cls.pipeline_task}", model="<this directory>")',
            f"print(pipe({example}))",
            "```",
        ]
    return lines + [f"Each prediction is {head_cls.card_returns(manifest)}.", ""]


def _adapter_loading(head_cls, manifest) -> list[str]:
    """adapter/ (finetune.models.artifacts): peft loads it on its base model; a head without a
    transformers class needs the framework."""
    peft = manifest["peft"]
    base = peft.get("base_model") or "<the base model>"
    what = f"A LoRA adapter (r={peft['r']}, alpha={peft['alpha']:g}, on {', '.join(peft['target_modules'])})"
    framework = ("Or with the framework (any head): `finetune.load(\"<this directory>\")`, or "
                 "`python train.py mode=evaluate task=" + manifest["task"] + " model.name_or_path=<this directory>`.")
    if head_cls.auto_class is None:
        return [
            f"{what} for `{base}`; the `{manifest['head']}` head is in head.safetensors, which only the framework reads.",
            "The adapter alone loads on the base with `PeftModel.from_pretrained(AutoModel.from_pretrained(base), <this directory>)`.",
            framework,
        ]
    labels = f", num_labels={head_cls.transformers_num_labels(manifest['num_labels'])}" if head_cls.export_module else ""
    with_head = " with the trained head" if head_cls.export_module else ""
    return [
        f"{what}{with_head}, for `{base}`:",
        "```python",
        f"from transformers import AutoTokenizer, {head_cls.auto_class}",
        "from peft import PeftModel",
        f'base = {head_cls.auto_class}.from_pretrained("{base}"{labels})',
        'model = PeftModel.from_pretrained(base, "<this directory>")' + ("  # the head comes with it (modules_to_save)" if with_head else ""),
        'tokenizer = AutoTokenizer.from_pretrained("<this directory>")  # holds the training input template',
        "model.config.pad_token_id = tokenizer.pad_token_id",
        "```",
        framework,
    ]


def how_to_load(manifest) -> str:
    head_cls = HEADS[manifest["head"]]
    if (manifest.get("peft") or {}).get("sha256"):
        return "\n".join(_adapter_loading(head_cls, manifest))
    own = head_cls.card_loading(manifest)
    if own is not None:
        return "\n".join(own)
    return "\n".join(_framework_forms(head_cls, manifest) + head_cls.card_transformers_usage(manifest))


def _evaluation_table(evaluation: dict) -> list[str]:
    keys = [k for k in next(iter(evaluation.values()), {}) if k != "num_examples"]
    return [
        "| split | " + " | ".join(keys) + " | examples |",
        "|---|" + "---|" * len(keys) + "---|",
        *[f"| {split} | " + " | ".join(f"{v:.4f}" for k, v in r.items() if k != "num_examples") + f" | {r.get('num_examples')} |"
          for split, r in evaluation.items()],
    ]


def _hyperparameters(cfg, manifest, metrics: dict) -> dict:
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
    return hyper


def write_model_card(model_dir: Path, manifest, cfg, metrics: dict) -> Path:
    head_cls = HEADS[manifest["head"]]
    evaluation = metrics.get("eval_splits") or {}
    front = {
        "library_name": "peft" if (manifest.get("peft") or {}).get("sha256") else "transformers",
        # The Hub's widget would run plain transformers, which is right only where its pipeline agrees.
        **({} if plain_pipeline_agrees(manifest) else {"inference": False}),
        "base_model": str(cfg.model.name_or_path),
        "tags": ["finetune", "gpt2", manifest["head"], manifest["task"]],
        "model-index": [{
            "name": f"{Path(str(cfg.model.name_or_path)).name}-{manifest['task']}",
            "results": [{
                "task": {"type": head_cls.card_task},
                "dataset": {"name": manifest["task"], "split": split},
                "metrics": [{"type": k, "value": round(float(v), 6)} for k, v in result.items() if k != "num_examples"],
            } for split, result in evaluation.items()],
        }],
    }
    body = [
        f"# {manifest['task']}: GPT-2 with a `{manifest['head']}` head",
        "",
        f"Fine-tuned from `{cfg.model.name_or_path}` on task `{manifest['task']}` with the finetune framework.",
        "",
        *head_cls.card_labels(manifest),
        "",
        "## Evaluation (best checkpoint)",
        *_evaluation_table(evaluation),
        "",
        "## Hyperparameters",
        *[f"- {name}: {value}" for name, value in _hyperparameters(cfg, manifest, metrics).items()],
        "",
        "## How to load it",
        how_to_load(manifest),
        "",
    ]
    path = Path(model_dir) / "README.md"
    path.write_text("---\n" + yaml.safe_dump(front, sort_keys=False) + "---\n\n" + "\n".join(body))
    return path
