"""Multiple choice (GPT-1's Story Cloze, RACE): one sequence per candidate, one scalar score each,
softmax over the candidates. No transformers class holds it: it exports as the backbone plus
head.safetensors, which the framework reads."""

from __future__ import annotations

import torch
from torch import nn

from finetune.errors import InputError
from finetune.models.heads.base import Head
from finetune.models.heads.reading import encode_last, encode_packed, is_packed

CARD_CHOICES = ["she went home.", "she stayed in bed.", "she sang a song.", "she called a friend.", "she left town."]


class MultipleChoiceHead(Head):
    input_format = "choices"
    required_roles = ("context", "choices", "label")
    text_roles = ("context", "choices")
    pipeline_task = "finetune-multiple-choice"
    card_task = "multiple-choice"

    def __init__(self, hidden_size, num_labels, dropout, args):
        super().__init__(hidden_size, num_labels, dropout, args)
        self.dropout = nn.Dropout(dropout)
        self.score = nn.Linear(hidden_size, 1, bias=False)

    @property
    def regression(self) -> bool:
        return False

    def forward(self, backbone, batch, reads=None):
        if is_packed(batch):
            pooled = encode_packed(backbone, batch, reads)  # (examples, choices, width)
            examples, choices = batch["last_positions"].shape
        else:
            examples, choices, length = batch["input_ids"].shape
            pooled = encode_last(
                backbone, batch["input_ids"].view(-1, length), batch["attention_mask"].view(-1, length), reads
            )
        scores = self.score(self.dropout(pooled)).view(examples, choices)
        if "choice_mask" in batch:  # placeholder candidates of examples with fewer choices
            scores = scores.float().masked_fill(batch["choice_mask"] == 0, torch.finfo(torch.float32).min)
        return scores

    @classmethod
    def check_inputs(cls, rows, labels):
        most = max(len(choices) for choices in rows["choices"])
        if most > len(labels):
            raise InputError(f"inputs: an example has {most} choices, but this model names {len(labels)} "
                             f"candidate positions ({', '.join(labels)})")

    @classmethod
    def tidy_prediction(cls, row, example, labels):
        """Only the example's own candidates, and the chosen candidate's text."""
        choices = example["choices"]
        names = labels[: len(choices)]
        row["probabilities"] = {name: row["probabilities"][name] for name in names}
        row["choice"] = choices[names.index(row["prediction"])]
        return row

    @classmethod
    def card_example(cls, manifest) -> str:
        count = len(manifest.get("labels") or []) or 2
        return f'{{"context": "Anna was tired after work.", "choices": {CARD_CHOICES[:count]!r}}}'

    @classmethod
    def card_returns(cls, manifest) -> str:
        return ("`{'prediction': <label>, 'probability': <its probability>, 'probabilities': {<label>: <probability>, ...}, "
                "'choice': <text of the chosen candidate>}`")

    @classmethod
    def card_framework_steps(cls, manifest) -> str:
        return ", a softmax over the candidates"

    @classmethod
    def card_transformers_usage(cls, manifest) -> list[str]:
        return ["The weights are a plain transformers `GPT2Model` (the backbone) plus `head.safetensors` (the "
                "candidate scorer); transformers has no pipeline for them, so use one of the two forms above."]
