"""Heads that score one sequence per example (GPT-1's classification and entailment) or a pair in
both orders (GPT-1's similarity), from the last real token. Their linear layers have no bias, so the
weights export one-to-one to transformers' GPT2ForSequenceClassification (usable with `pipeline`).
"""

from __future__ import annotations

import torch
from torch import nn

from finetune.models.heads.base import Head
from finetune.models.heads.reading import encode_last, encode_pooled, is_packed

PAIR_EXAMPLE = '("A man is playing a guitar.", "A man is making music.")'
PAIR_AS_DICT = '{"text": "A man is playing a guitar.", "text_pair": "A man is making music."}'


class ClassificationHead(Head):
    """Dropout + linear on the last real token: `start text extract` (or a delimited pair)."""

    optional_roles = ("text_pair",)
    text_roles = ("text", "text_pair")
    exports_to = "GPT2ForSequenceClassification"
    auto_class = "AutoModelForSequenceClassification"
    peft_task_type = "SEQ_CLS"
    pipeline_task = "finetune-text-classification"

    def __init__(self, hidden_size, num_labels, dropout, args):
        super().__init__(hidden_size, num_labels, dropout, args)
        self.dropout = nn.Dropout(dropout)
        self.score = nn.Linear(hidden_size, num_labels, bias=False)

    def forward(self, backbone, batch, reads=None):
        return self.score(self.dropout(encode_pooled(backbone, batch, reads)))

    @classmethod
    def reads_pairs(cls, manifest) -> bool:
        return "text_pair" in (manifest.get("input_roles") or cls.required_roles)

    @classmethod
    def card_example(cls, manifest) -> str:
        return PAIR_EXAMPLE if cls.reads_pairs(manifest) else super().card_example(manifest)

    @classmethod
    def plain_pipeline(cls, manifest) -> str | None:
        return "text-classification"

    @classmethod
    def card_transformers_usage(cls, manifest) -> list[str]:
        plain = PAIR_AS_DICT if cls.reads_pairs(manifest) else cls.card_example(manifest)
        extra = ', function_to_apply="none"' if manifest.get("labels") is None else ""
        return [
            "The directory is also a plain transformers `GPT2ForSequenceClassification`, and transformers' own pipeline "
            "gives the same predictions (the saved tokenizer applies the training input format itself):",
            "```python",
            "from transformers import pipeline",
            "",
            f'classify = pipeline("text-classification", model="<this directory>"{extra})',
            f"print(classify({plain}))",
            "```",
        ]


class EntailmentHead(ClassificationHead):
    """Premise and hypothesis in one sequence, `start premise delim hypothesis extract`."""

    required_roles = ("text", "text_pair", "label")
    optional_roles = ()


class SimilarityHead(ClassificationHead):
    """GPT-1 similarity: both orders encoded, pooled states added, then the linear layer.

    `head_args.both_orders: false` scores the pair in its given order only (for comparison).
    Regression (STS-B) when the task has no label names, classification (MRPC, QQP) otherwise.
    """

    required_roles = ("text", "text_pair", "label")
    optional_roles = ()

    @classmethod
    def format_for(cls, args):
        return "text_both_orders" if args.get("both_orders", True) else "text"

    def forward(self, backbone, batch, reads=None):
        if is_packed(batch):
            pooled = encode_pooled(backbone, batch, reads)  # (examples, 2, width) with both orders, else (examples, width)
            if pooled.dim() == 3:
                pooled = pooled[:, 0] + pooled[:, 1]
            return self.score(self.dropout(pooled))
        if "input_ids_swapped" not in batch:
            return super().forward(backbone, batch, reads)
        input_ids = torch.cat([batch["input_ids"], batch["input_ids_swapped"]])
        attention_mask = torch.cat([batch["attention_mask"], batch["attention_mask_swapped"]])
        forward, swapped = encode_last(backbone, input_ids, attention_mask, reads).chunk(2)
        return self.score(self.dropout(forward + swapped))

    def sequence_masks(self, batch):
        if is_packed(batch):
            return super().sequence_masks(batch)
        return [batch["attention_mask"]] + ([batch["attention_mask_swapped"]] if "attention_mask_swapped" in batch else [])

    @staticmethod
    def both_orders(manifest) -> bool:
        return (manifest.get("head_args") or {}).get("both_orders", True)

    @classmethod
    def card_example(cls, manifest) -> str:
        return '("A man is playing a guitar.", "Someone plays the guitar.")'

    @classmethod
    def card_framework_steps(cls, manifest) -> str:
        return ", both sentence orders" if cls.both_orders(manifest) else ""

    @classmethod
    def plain_pipeline(cls, manifest) -> str | None:
        return None if cls.both_orders(manifest) else "text-classification"

    @classmethod
    def card_transformers_usage(cls, manifest) -> list[str]:
        if not cls.both_orders(manifest):
            return super().card_transformers_usage(manifest)
        return [
            "**Do not use transformers' plain `pipeline(\"text-classification\")` on this directory.** It loads (it is a "
            "`GPT2ForSequenceClassification`) but scores one order of the pair, W·h(a,b), while this model was trained "
            "to score both, W·(h(a,b) + h(b,a)): its scores and probabilities are wrong (regression scores come out "
            "about half as large). Use one of the two forms above."
        ]
