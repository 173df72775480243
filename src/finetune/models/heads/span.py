"""Extractive QA (SQuAD): a start and an end score for every token of `question delim context`."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from finetune.models.heads.base import Head
from finetune.models.heads.reading import Read


class SpanHead(Head):
    """The question comes first so that, reading left to right, every context token has seen it.

    Long contexts are split into overlapping windows (see finetune.data.span, which also turns
    the scores back into answer strings). `qa_outputs` maps one-to-one onto transformers'
    GPT2ForQuestionAnswering. head_args: stride, max_answer_length, n_best.
    """

    input_format = "span"
    evaluator = "spans"
    required_roles = ("id", "question", "context", "answers")
    text_roles = ("question", "context")
    target_roles = ("answers",)
    zero_shot = "generated"
    exports_to = "GPT2ForQuestionAnswering"
    export_module = "qa_outputs"
    auto_class = "AutoModelForQuestionAnswering"
    peft_task_type = "QUESTION_ANS"
    pipeline_task = "finetune-question-answering"
    card_task = "question-answering"

    def __init__(self, hidden_size, num_labels, dropout, args):
        super().__init__(hidden_size, num_labels, dropout, args)
        self.dropout = nn.Dropout(dropout)
        self.qa_outputs = nn.Linear(hidden_size, 2)

    @property
    def regression(self) -> bool:
        return False

    @classmethod
    def transformers_num_labels(cls, num_labels: int) -> int:
        return 2

    def forward(self, backbone, batch, reads=None):
        """Scores of shape (batch, length, 2): [..., 0] start, [..., 1] end; padding gets the minimum."""
        hidden = backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).last_hidden_state
        if reads is not None:
            reads.append(Read(hidden, batch["input_ids"], batch["attention_mask"]))
        logits = self.qa_outputs(self.dropout(hidden)).float()
        padding = batch["attention_mask"] == 0
        return logits.masked_fill(padding.unsqueeze(-1), torch.finfo(logits.dtype).min)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """Mean of the start and end cross-entropies per window; `labels` holds (start, end) per window."""
        start = F.cross_entropy(logits[..., 0], labels[:, 0], reduction=reduction)
        end = F.cross_entropy(logits[..., 1], labels[:, 1], reduction=reduction)
        return (start + end) / 2

    def predictions(self, logits: torch.Tensor) -> torch.Tensor:
        return logits

    def export_config(self, config) -> None:
        config.num_labels = 2

    @classmethod
    def card_example(cls, manifest) -> str:
        return '("Where was Alice born?", "Alice was born in Paris in 1950 and moved to Rome.")'

    @classmethod
    def card_returns(cls, manifest) -> str:
        return "`{'prediction': <answer string cut out of the context>}`"

    @classmethod
    def card_framework_steps(cls, manifest) -> str:
        return ", context windows with stride and n-best span decoding"

    @classmethod
    def card_transformers_usage(cls, manifest) -> list[str]:
        return ["The weights are a plain transformers `GPT2ForQuestionAnswering`; transformers 5 has no "
                "question-answering pipeline, so use one of the two forms above."]
