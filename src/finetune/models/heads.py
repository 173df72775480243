"""Task heads on top of the backbone. A new head is one class here plus one entry in HEADS.

A head declares the input format it reads (see finetune.data.features), the column roles it
needs, how it scores a batch, its loss and how its scores turn into predictions for the metric.
Linear layers of the sequence heads have no bias so the trained weights export one-to-one to
transformers' GPT2ForSequenceClassification (usable with `pipeline`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from finetune.data.blocks import IGNORE_INDEX, check_stride
from finetune.errors import ConfigError, DataError
from finetune.generation import generation_config


def pool_last_token(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Hidden state of each sequence's last real token, found from the attention mask.

    Not from `input_ids == pad_id`: the pad id is GPT-2's end-of-text token, which may also be a
    real token of the text or of the input template.
    """
    positions = torch.arange(attention_mask.shape[-1], device=attention_mask.device)
    last = (positions * attention_mask.to(positions.dtype)).argmax(-1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


@dataclass
class Read:
    """One batch of sequences a head ran through the backbone (for the auxiliary LM loss)."""

    hidden: torch.Tensor  # (sequences, length, width)
    input_ids: torch.Tensor  # (sequences, length)
    attention_mask: torch.Tensor  # (sequences, length): 1 on real tokens; packed rows: sequence ids (0 on padding)


def encode_last(backbone, input_ids, attention_mask, reads: list | None = None) -> torch.Tensor:
    """Last real token's hidden state of right-padded sequences (the collators always pad right).

    The backbone runs without the padding mask: under causal attention a real token never sees
    the pads that follow it, so its hidden state is exactly what the masked call gives (see
    tests/test_batching.py). Without a mask SDPA takes its causal kernel (flash attention on GPU),
    and transformers neither builds a 4-D mask nor checks it on the host (a device sync per step).
    `reads` (a list) collects the sequences and their hidden states for the auxiliary LM loss.
    """
    hidden = backbone(input_ids=input_ids, use_cache=False).last_hidden_state  # no KV cache in training or scoring
    if reads is not None:
        reads.append(Read(hidden, input_ids, attention_mask))
    return pool_last_token(hidden, attention_mask)


def is_packed(batch) -> bool:
    """A padding-free packed batch (finetune.data.collate.PackedCollator) rather than a padded one."""
    return "last_positions" in batch


def encode_packed(backbone, batch, reads: list | None = None) -> torch.Tensor:
    """Last-token hidden states of the sequences of a packed batch, shaped like `last_positions`.

    Position ids restart at every sequence and no 2-D mask is given, so transformers derives the
    block-diagonal causal mask from them (masking_utils.find_packed_sequence_indices; FlashAttention's
    variable-length path on a single row): each sequence attends to itself only, as alone. Both
    conditions matter: a KV cache (`use_cache=True`, GPT-2's default) or any 2-D attention mask (an
    all-ones one included) turns the detection off, and every token would then attend to the
    sequences before it in its row (tests/test_packing.py checks both). `reads` gets the rows with
    their `sequence_ids`, so the auxiliary LM loss never predicts across a sequence boundary.
    """
    hidden = backbone(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).last_hidden_state
    if reads is not None:
        reads.append(Read(hidden, batch["input_ids"], batch["sequence_ids"]))
    return hidden.flatten(0, 1)[batch["last_positions"]]


def lm_logits(backbone, hidden: torch.Tensor) -> torch.Tensor:
    """GPT-2's LM head: next-token logits from the (tied) token embedding matrix."""
    return F.linear(hidden, backbone.get_input_embeddings().weight)


def lm_target_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions whose hidden state predicts a real next token of the same sequence: both the position
    and the next are real (pads never count, as inputs or as targets) and belong to one sequence.
    `attention_mask` is a padding mask (1 real, 0 pad) or a packed batch's `sequence_ids` (1, 2, ...
    per sequence of a row, 0 on padding), where the last token of a sequence predicts nothing.
    Shape (..., length - 1)."""
    current, following = attention_mask[..., :-1], attention_mask[..., 1:]
    return (following != 0) & (current == following)


def lm_target_count(attention_mask: torch.Tensor) -> torch.Tensor:
    return lm_target_positions(attention_mask).sum()


def lm_loss_sum(backbone, reads: list[Read]) -> torch.Tensor:
    """Summed next-token cross-entropy over the real tokens of every sequence read.

    Logits are computed only at target positions (real tokens followed by a real token), so pads
    cost neither memory nor compute.
    """
    if not reads:
        raise RuntimeError("the auxiliary LM loss is on, but the head recorded no sequence it read (see encode_last)")
    total = 0
    for read in reads:
        targets = lm_target_positions(read.attention_mask)
        logits = lm_logits(backbone, read.hidden[:, :-1][targets]).float()
        total = total + F.cross_entropy(logits, read.input_ids[:, 1:][targets], reduction="sum")
    return total


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


LM_ONLY_ARGS = ("sample_prompts", "generation")  # head_args that need a head that generates text


class Head(nn.Module):
    input_format: ClassVar[str] = "text"
    evaluator: ClassVar[str] = "classes"  # how outputs are gathered and scored (finetune.training.evaluation)
    required_roles: ClassVar[tuple] = ("text", "label")
    optional_roles: ClassVar[tuple] = ()
    text_roles: ClassVar[tuple] = ("text",)
    exports_to: ClassVar[str | None] = None  # transformers class the weights map onto, if any
    export_module: ClassVar[str | None] = "score"  # the layer that becomes `<exports_to>.<export_module>`
    pipeline_task: ClassVar[str | None] = None  # the transformers pipeline finetune registers for it (finetune.pipelines)
    # The backbone's own LM head (tied to the token embeddings): no weights of its own, so a pretrained
    # LM is already complete (it can be evaluated as it is) and it generates text.
    language_model: ClassVar[bool] = False
    # head_args a fine-tuned model brings with it to evaluate/predict (its input format); None = all.
    trained_args: ClassVar[tuple | None] = None

    def __init__(self, hidden_size: int, num_labels: int, dropout: float, args: dict):
        super().__init__()
        self.num_labels = num_labels
        self.args = dict(args)

    @classmethod
    def format_for(cls, args: dict) -> str:
        return cls.input_format

    @classmethod
    def check_config(cls, cfg) -> None:
        """Head-specific config checks, before any data or model is loaded (ConfigError names the key)."""
        for key in LM_ONLY_ARGS:
            if key in cfg.task.head_args:
                raise ConfigError(f"task.head_args.{key}: text generation needs the 'lm' head, but task '{cfg.task.name}' "
                                  f"has head '{cfg.task.head}' (remove the key, or train a language-modelling task)")

    @property
    def regression(self) -> bool:
        return self.num_labels == 1

    def loss_units(self, labels: torch.Tensor):
        """How many units the task loss sums over in a batch: examples (or span windows)."""
        return len(labels)

    def sequence_masks(self, batch) -> list[torch.Tensor]:
        """Attention masks of every sequence this head reads in `batch` (the auxiliary LM loss counts their
        tokens); a packed batch has one tensor for all of them, its `sequence_ids`."""
        return [batch["sequence_ids"]] if is_packed(batch) else [batch["attention_mask"]]

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

    def forward(self, backbone, batch, reads=None):
        if is_packed(batch):
            pooled = encode_packed(backbone, batch, reads)
        else:
            pooled = encode_last(backbone, batch["input_ids"], batch["attention_mask"], reads)
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

    def forward(self, backbone, batch, reads=None):
        if is_packed(batch):
            pooled = encode_packed(backbone, batch, reads)  # (examples, 2, width) with both orders, else (examples, width)
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


class LanguageModelHead(Head):
    """Language modelling (GPT-1's stage 1): GPT-2's own LM head, next-token logits from the tied
    token embeddings, so it has no weights of its own and exports as `GPT2LMHeadModel`.

    Reads blocks of `task.max_length` tokens (finetune.data.blocks); the loss is the next-token
    cross-entropy per predicted token, normalised over the whole optimizer step like every loss.
    head_args: `stride` (strided evaluation), `sample_prompts` and `generation` (text generated at
    each evaluation, see finetune.generation; `generation` is also the export's generation config).
    """

    input_format = "blocks"
    evaluator = "tokens"
    required_roles = ("text",)
    optional_roles = ("choices", "label")  # the labelled choice is appended to the document
    text_roles = ()  # blank documents are skipped, not errors
    exports_to = "GPT2LMHeadModel"
    export_module = None  # the LM head is the embedding matrix: exported with the backbone
    language_model = True
    trained_args = ()  # stride, prompts and generation are the evaluation's choice, not the model's

    @classmethod
    def check_config(cls, cfg) -> None:
        task = cfg.task
        if task.aux_lm_weight > 0:
            raise ConfigError(f"task.aux_lm_weight={task.aux_lm_weight}: the auxiliary LM loss is for task heads; the 'lm' "
                              f"head's loss already is the LM loss (set task.aux_lm_weight=0)")
        if cfg.model.gpt1_tokens:
            raise ConfigError("model.gpt1_tokens=true: the 'lm' head reads raw text with no input template; "
                              "add GPT-1's tokens in the downstream task instead")
        args = dict(task.head_args)
        prompts = args.get("sample_prompts")
        if prompts is not None and (isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts)):
            raise ConfigError(f"task.head_args.sample_prompts = {prompts!r}: expected a list of strings "
                              f"(e.g. task.head_args.sample_prompts='[\"Once upon a time\"]')")
        generation_config(args.get("generation"))  # transformers' GenerationConfig checks its own fields
        try:
            check_stride(args, task.max_length)
        except DataError as err:
            raise ConfigError(str(err)) from None

    @property
    def regression(self) -> bool:
        return False

    def export_config(self, config) -> None:
        return None

    def forward(self, backbone, batch, reads=None):
        hidden = backbone(input_ids=batch["input_ids"], use_cache=False).last_hidden_state  # blocks: never padded
        return lm_logits(backbone, hidden)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """Token t+1 from position t; positions labelled IGNORE_INDEX (before a window's first scored token) do not count.

        The labels are shifted, not the logits (as transformers' causal-LM loss does): slicing the
        logits would copy the largest tensor of the step."""
        targets = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
        return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX, reduction=reduction)

    def loss_units(self, labels: torch.Tensor):
        return (labels[:, 1:] != IGNORE_INDEX).sum()

    @torch.no_grad()
    def score_tokens(self, backbone, input_ids: torch.Tensor, labels: torch.Tensor, max_logits: int = 1 << 25):
        """Per sequence: summed NLL and number of scored tokens; per position: the predicted and the
        target token (IGNORE_INDEX where not scored). Logits are made a few rows at a time (at most
        `max_logits` floats), so evaluation in large batches stays within memory."""
        hidden = backbone(input_ids=input_ids, use_cache=False).last_hidden_state[:, :-1]
        targets = labels[:, 1:]
        vocab = backbone.get_input_embeddings().weight.shape[0]
        rows = max(1, max_logits // max(1, hidden.shape[1] * vocab))
        nll, predicted = [], []
        for start in range(0, hidden.shape[0], rows):
            logits = lm_logits(backbone, hidden[start : start + rows]).float()
            nll.append(F.cross_entropy(logits.transpose(1, 2), targets[start : start + rows],
                                       ignore_index=IGNORE_INDEX, reduction="none").sum(-1))
            predicted.append(logits.argmax(-1))
        return torch.cat(nll), (targets != IGNORE_INDEX).sum(-1), torch.cat(predicted), targets


HEADS: dict[str, type[Head]] = {
    "classification": ClassificationHead,
    "entailment": EntailmentHead,
    "similarity": SimilarityHead,
    "multiple_choice": MultipleChoiceHead,
    "span": SpanHead,
    "lm": LanguageModelHead,
}
