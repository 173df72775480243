"""model/README.md: a Hugging Face style model card, so an exported directory explains itself."""

from __future__ import annotations

from pathlib import Path

import yaml

from finetune.models.heads import HEADS

PIPELINE_TASKS = {"classification": "text-classification", "entailment": "text-classification", "similarity": "text-classification"}

# One example input per head, in the form Predictor.predict and the finetune pipelines take.
EXAMPLES = {
    "classification": '"a gorgeous, witty film"',
    "entailment": '("A man is playing a guitar.", "A man is making music.")',
    "similarity": '("A man is playing a guitar.", "Someone plays the guitar.")',
    "span": '("Where was Alice born?", "Alice was born in Paris in 1950 and moved to Rome.")',
}
CHOICES = ["she went home.", "she stayed in bed.", "she sang a song.", "she called a friend.", "she left town."]


def both_orders(manifest: dict) -> bool:
    return manifest["head"] == "similarity" and (manifest.get("head_args") or {}).get("both_orders", True)


def plain_pipeline_agrees(manifest: dict) -> bool:
    """Does transformers' own pipeline ("text-classification"; "text-generation" for an LM) on the
    directory give the framework's predictions? For one-sequence heads and the LM yes; a both-order
    similarity model it scores in one order."""
    return manifest["head"] == "lm" or (manifest["head"] in PIPELINE_TASKS and not both_orders(manifest))


def _pairs(manifest: dict) -> bool:
    return "text_pair" in (manifest.get("input_roles") or HEADS[manifest["head"]].required_roles)


def _example(manifest: dict) -> str:
    if manifest["head"] == "multiple_choice":
        count = len(manifest.get("labels") or []) or 2
        return f'{{"context": "Anna was tired after work.", "choices": {CHOICES[:count]!r}}}'
    if manifest["head"] == "classification" and _pairs(manifest):
        return EXAMPLES["entailment"]
    return EXAMPLES[manifest["head"]]


def _returns(manifest: dict) -> str:
    head, labels = manifest["head"], manifest.get("labels")
    if head == "span":
        return "`{'prediction': <answer string cut out of the context>}`"
    if labels is None:
        return "`{'prediction': <score>}`"
    extra = ", 'choice': <text of the chosen candidate>" if head == "multiple_choice" else ""
    return f"`{{'prediction': <label>, 'probability': <its probability>, 'probabilities': {{<label>: <probability>, ...}}{extra}}}`"


ADAPTER_CLASSES = {"classification": "AutoModelForSequenceClassification", "entailment": "AutoModelForSequenceClassification",
                   "similarity": "AutoModelForSequenceClassification", "span": "AutoModelForQuestionAnswering"}


def _how_to_load_adapter(manifest: dict) -> str:
    """adapter/ (finetune.models.lora): peft loads it on its base model; multiple choice needs the framework."""
    peft = manifest["peft"]
    base = peft.get("base_model") or "<the base model>"
    framework = [
        "Or with the framework (any head, multiple choice included): `finetune.load(\"<this directory>\")`, or "
        "`python train.py mode=evaluate task=" + manifest["task"] + " model.name_or_path=<this directory>`.",
    ]
    cls = ADAPTER_CLASSES.get(manifest["head"])
    if cls is None:
        return "\n".join([
            f"A LoRA adapter (r={peft['r']}, alpha={peft['alpha']:g}, on {', '.join(peft['target_modules'])}) for `{base}`; "
            "the multiple-choice head (one score per candidate) is in head.safetensors, which only the framework reads.",
            "The adapter alone loads on the base with `PeftModel.from_pretrained(AutoModel.from_pretrained(base), <this directory>)`.",
            *framework,
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
    if manifest["head"] == "lm":
        return "\n".join([
            "```python",
            "from transformers import pipeline",
            'generate = pipeline("text-generation", model="<this directory>")',
            'print(generate("The history of the city")[0]["generated_text"])',
            "```",
            "generation_config.json holds the generation settings the training samples used. As a backbone for a task:",
            "`python train.py task=<task> model.name_or_path=<this directory>` (the LM head is dropped, the task head added).",
        ])
    head, example = manifest["head"], _example(manifest)
    lines = [
        "With the finetune package installed, either form predicts exactly what the framework's evaluation and "
        "`mode=predict` compute (the tokenizer's input template"
        + (", both sentence orders" if both_orders(manifest) else "")
        + (", context windows with stride and n-best span decoding" if head == "span" else "")
        + (", a softmax over the candidates" if head == "multiple_choice" else "") + "):",
        "```python",
        "import finetune",
        "",
        'predictor = finetune.load("<this directory>")',
        f"print(predictor.predict({example}))",
        f"print(predictor.predict([{example}, {example}]))  # a list: batched, one prediction each",
        "```",
        "```python",
        "import finetune  # registers the finetune pipelines with transformers",
        "from transformers import pipeline",
        "",
        f'pipe = pipeline("{HEADS[head].pipeline_task}", model="<this directory>")',
        f"print(pipe({example}))",
        "```",
        f"Each prediction is {_returns(manifest)}.",
        "",
    ]
    if plain_pipeline_agrees(manifest):
        pair = _pairs(manifest)
        plain = '{"text": "A man is playing a guitar.", "text_pair": "A man is making music."}' if pair else example
        extra = ', function_to_apply="none"' if manifest.get("labels") is None else ""
        lines += [
            "The directory is also a plain transformers `GPT2ForSequenceClassification`, and transformers' own pipeline "
            "gives the same predictions (the saved tokenizer applies the training input format itself):",
            "```python",
            "from transformers import pipeline",
            "",
            f'classify = pipeline("text-classification", model="<this directory>"{extra})',
            f"print(classify({plain}))",
            "```",
        ]
    elif both_orders(manifest):
        lines.append(
            "**Do not use transformers' plain `pipeline(\"text-classification\")` on this directory.** It loads (it is a "
            "`GPT2ForSequenceClassification`) but scores one order of the pair, W·h(a,b), while this model was trained "
            "to score both, W·(h(a,b) + h(b,a)): its scores and probabilities are wrong (regression scores come out "
            "about half as large). Use one of the two forms above."
        )
    elif head == "span":
        lines.append("The weights are a plain transformers `GPT2ForQuestionAnswering`; transformers 5 has no "
                     "question-answering pipeline, so use one of the two forms above.")
    else:
        lines.append("The weights are a plain transformers `GPT2Model` (the backbone) plus `head.safetensors` (the "
                     "candidate scorer); transformers has no pipeline for them, so use one of the two forms above.")
    return "\n".join(lines)


def write_model_card(model_dir: Path, manifest: dict, cfg, metrics: dict) -> Path:
    evaluation = metrics.get("eval_splits") or {}
    front = {
        "library_name": "peft" if (manifest.get("peft") or {}).get("sha256") else "transformers",
        # The Hub's widget would run plain transformers, which is right only for one-sequence heads.
        **({} if plain_pipeline_agrees(manifest) else {"inference": False}),
        "base_model": str(cfg.model.name_or_path),
        "tags": ["finetune", "gpt2", manifest["head"], manifest["task"]],
        "model-index": [{
            "name": f"{Path(str(cfg.model.name_or_path)).name}-{manifest['task']}",
            "results": [{
                "task": {"type": {**PIPELINE_TASKS, "lm": "text-generation"}.get(manifest["head"], manifest["head"])},
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
        *(["## Language model", "GPT-2's LM head, tied to the token embeddings (`GPT2LMHeadModel`)."] if manifest["head"] == "lm" else [
            "## Labels",
            ", ".join(f"{i}: `{name}`" for i, name in enumerate(labels)) if labels else "One regression output (a score)."]),
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
