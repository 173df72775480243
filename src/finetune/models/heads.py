"""Task heads on top of the backbone. A new head is one class here plus one entry in HEADS.

A head declares the input format it reads (see finetune.data.features), the column roles it
needs, how it scores a batch, its loss and how its scores turn into predictions for the metric.
Linear layers of the sequence heads have no bias so the trained weights export one-to-one to
transformers' GPT2ForSequenceClassification (usable with `pipeline`).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn
from torch.nn import functional as F


def pool_last_token(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Hidden state of each sequence's last real token, found from the attention mask.

    Not from `input_ids == pad_id`: the pad id is GPT-2's end-of-text token, which may also be a
    real token of the text or of the input template.
    """
    positions = torch.arange(attention_mask.shape[-1], device=attention_mask.device)
    last = (positions * attention_mask.to(positions.dtype)).argmax(-1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def encode_last(backbone, input_ids, attention_mask) -> torch.Tensor:
    """Last real token's hidden state of right-padded sequences (the collators always pad right).

    The backbone runs without the padding mask: under causal attention a real token never sees
    the pads that follow it, so its hidden state is exactly what the masked call gives (see
    tests/test_batching.py). Without a mask SDPA takes its causal kernel (flash attention on GPU),
    and transformers neither builds a 4-D mask nor checks it on the host (a device sync per step).
    """
    hidden = backbone(input_ids=input_ids, use_cache=False).last_hidden_state  # no KV cache in training or scoring
    return pool_last_token(hidden, attention_mask)


def skip_padding_check(backbone) -> None:
    """Turn off transformers' "We strongly recommend passing in an attention_mask" check on this backbone.

    The sequence heads call the backbone without a padding mask on right-padded batches on purpose
    (see `encode_last`: exact under causal attention), so the warning it prints at the first step
    is expected here and would only alarm users; the check also reads two token ids of every batch
    back to the host. Set per instance: a model loaded elsewhere keeps the check.
    """
    backbone.warn_if_padding_and_no_attention_mask = _no_padding_check


def _no_padding_check(input_ids, attention_mask) -> None:
    return None


class Head(nn.Module):
    input_format: ClassVar[str] = "text"
    evaluator: ClassVar[str] = "classes"  # how outputs are gathered and scored (finetune.training.evaluation)
    required_roles: ClassVar[tuple] = ("text", "label")
    optional_roles: ClassVar[tuple] = ()
    text_roles: ClassVar[tuple] = ("text",)
    exports_to: ClassVar[str | None] = None  # transformers class the weights map onto, if any
    export_module: ClassVar[str] = "score"  # the layer that becomes `<exports_to>.<export_module>`
    pipeline_task: ClassVar[str | None] = None  # the transformers pipeline finetune registers for it (finetune.pipelines)

    def __init__(self, hidden_size: int, num_labels: int, dropout: float, args: dict):
        super().__init__()
        self.num_labels = num_labels
        self.args = dict(args)

    @classmethod
    def format_for(cls, args: dict) -> str:
        return cls.input_format

    @property
    def regression(self) -> bool:
        return self.num_labels == 1

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        if self.regression:
            return F.mse_loss(logits.squeeze(-1).float(), labels.float(), reduction=reduction)
        return F.cross_entropy(logits.float(), labels, reduction=reduction)

    def predictions(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.squeeze(-1).float() if self.regression else logits.argmax(-1)

    def export_config(self, config) -> None:
        """Set what `exports_to` reads from the transformers config (sequence classification)."""
        config.num_labels = self.num_labels
        config.problem_type = "regression" if self.regression else "single_label_classification"


class ClassificationHead(Head):
    """Dropout + linear on the last real token: `start text extract` (or a delimited pair)."""

    optional_roles = ("text_pair",)
    text_roles = ("text", "text_pair")
    exports_to = "GPT2ForSequenceClassification"
    pipeline_task = "finetune-text-classification"

    def __init__(self, hidden_size, num_labels, dropout, args):
        super().__init__(hidden_size, num_labels, dropout, args)
        self.dropout = nn.Dropout(dropout)
        self.score = nn.Linear(hidden_size, num_labels, bias=False)

    def forward(self, backbone, batch):
        pooled = encode_last(backbone, batch["input_ids"], batch["attention_mask"])
        return self.score(self.dropout(pooled))


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

    def forward(self, backbone, batch):
        if "input_ids_swapped" not in batch:
            return super().forward(backbone, batch)
        input_ids = torch.cat([batch["input_ids"], batch["input_ids_swapped"]])
        attention_mask = torch.cat([batch["attention_mask"], batch["attention_mask_swapped"]])
        forward, swapped = encode_last(backbone, input_ids, attention_mask).chunk(2)
        return self.score(self.dropout(forward + swapped))


class MultipleChoiceHead(Head):
    """One sequence per candidate, one scalar score each, softmax over the candidates."""

    input_format = "choices"
    required_roles = ("context", "choices", "label")
    text_roles = ("context", "choices")
    pipeline_task = "finetune-multiple-choice"

    def __init__(self, hidden_size, num_labels, dropout, args):
        super().__init__(hidden_size, num_labels, dropout, args)
        self.dropout = nn.Dropout(dropout)
        self.score = nn.Linear(hidden_size, 1, bias=False)

    @property
    def regression(self) -> bool:
        return False

    def forward(self, backbone, batch):
        examples, choices, length = batch["input_ids"].shape
        pooled = encode_last(
            backbone, batch["input_ids"].view(-1, length), batch["attention_mask"].view(-1, length)
        )
        scores = self.score(self.dropout(pooled)).view(examples, choices)
        if "choice_mask" in batch:  # placeholder candidates of examples with fewer choices
            scores = scores.float().masked_fill(batch["choice_mask"] == 0, torch.finfo(torch.float32).min)
        return scores


class SpanHead(Head):
    """Extractive QA (SQuAD): a start and an end score for every token of `question delim context`.

    The question comes first so that, reading left to right, every context token has seen it.
    Long contexts are split into overlapping windows (see finetune.data.span, which also turns
    the scores back into answer strings). `qa_outputs` maps one-to-one onto transformers'
    GPT2ForQuestionAnswering. head_args: stride, max_answer_length, n_best.
    """

    input_format = "span"
    evaluator = "spans"
    required_roles = ("id", "question", "context", "answers")
    text_roles = ("question", "context")
    exports_to = "GPT2ForQuestionAnswering"
    export_module = "qa_outputs"
    pipeline_task = "finetune-question-answering"

    def __init__(self, hidden_size, num_labels, dropout, args):
        super().__init__(hidden_size, num_labels, dropout, args)
        self.dropout = nn.Dropout(dropout)
        self.qa_outputs = nn.Linear(hidden_size, 2)

    @property
    def regression(self) -> bool:
        return False

    def forward(self, backbone, batch):
        """Scores of shape (batch, length, 2): [..., 0] start, [..., 1] end; padding gets the minimum."""
        hidden = backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).last_hidden_state
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


HEADS: dict[str, type[Head]] = {
    "classification": ClassificationHead,
    "entailment": EntailmentHead,
    "similarity": SimilarityHead,
    "multiple_choice": MultipleChoiceHead,
    "span": SpanHead,
}
