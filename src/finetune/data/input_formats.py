"""Input formats: one registry entry per way a head's examples become model inputs.

A head names its format (`Head.format_for`); everything that differs between formats is a method
of its entry here, and the rest of the framework asks the entry:
- `featurize`: a split's standardised rows -> token ids (cached `datasets.map`, see features.py),
  with what was truncated or dropped;
- `collator`: padded batches (finetune.data.collate); `packed_sequences` / `packed_shape`: the
  sequences `PackedCollator` lays end to end, for formats that pack (`packs`);
- `training_batching`: which `trainer.batching` mode training actually uses for it;
- `row_key`: the column of evaluation features that names the row they came from, so outputs
  gathered in any order (length-sorted, several processes) map back to their rows.
Adding a format: docs/architecture.md.
"""

from __future__ import annotations

import logging

import torch
from datasets import Dataset

from finetune.data import blocks, span
from finetune.data.cache import tokenize_map
from finetune.data.collate import BlockCollator, ChoiceCollator, PairCollator, SpanCollator, TextCollator
from finetune.data.features import both_orders_features, choice_features, text_features

log = logging.getLogger(__name__)


class InputFormat:
    """Defaults: one tokenized sequence per example, evaluation features indexed by row."""

    name: str = ""
    features = None  # the batched map function: (batch, tokenizer, max_length, args, training) -> columns
    collator_class = TextCollator
    packs = False  # trainer.batching=packed lays its sequences end to end (else it is read `bucketed`)
    row_key = "index"
    needs_row_ids = False  # inference rows need an `id` column (span windows are matched back by it)

    def featurize(self, rows: Dataset, tokenizer, task, training: bool, where: str) -> tuple[Dataset, dict]:
        """Token ids for one split's rows (cached by `datasets.map`), and what was truncated."""
        if not training:
            rows = rows.add_column("index", list(range(len(rows))))
        log.info("tokenizing %s (%d rows)", where, len(rows))
        features = self.tokenize(rows, tokenizer, task, training, where)
        truncated = int(sum(features["truncated"]))
        features = features.remove_columns("truncated")
        if "label" in features.column_names:
            features = features.rename_column("label", "labels")
        if truncated:
            log.warning("%s: %d of %d examples longer than task.max_length=%d were truncated", where, truncated, len(rows), task.max_length)
        return features, {"truncated": truncated}

    def tokenize(self, rows: Dataset, tokenizer, task, training: bool, where: str) -> Dataset:
        keep = {"label", "index"}
        return tokenize_map(
            rows, type(self).features, tokenizer,
            {"max_length": task.max_length, "args": dict(task.head_args), "training": training},
            batched=True, remove_columns=[c for c in rows.column_names if c not in keep], desc=f"Tokenizing {where}",
        )

    def collator(self, tokenizer, pad_to_multiple_of=None):
        return self.collator_class(tokenizer, pad_to_multiple_of)

    def training_batching(self, mode: str) -> str:
        """The batching mode training uses when `trainer.batching=mode`: packed only where the format packs."""
        return "bucketed" if mode == "packed" and not self.packs else mode

    def packed_sequences(self, features, pad_token_id: int) -> tuple[list[list[int]], dict]:
        """Token lists in the order the head reads them, and the format's extra tensors."""
        raise NotImplementedError(f"input format '{self.name}' is not packed")

    def packed_shape(self, last: torch.Tensor, examples: int) -> torch.Tensor:
        """`last_positions` shaped as the head pools them."""
        return last


class Text(InputFormat):
    """`start text extract`, or `start text delim text_pair extract` for a pair."""

    name = "text"
    features = staticmethod(text_features)
    packs = True

    def packed_sequences(self, features, pad_token_id):
        return [f["input_ids"] for f in features], {}


class TextBothOrders(InputFormat):
    """A pair in both orders (GPT-1 similarity): the head adds the two pooled states."""

    name = "text_both_orders"
    features = staticmethod(both_orders_features)
    collator_class = PairCollator
    packs = True

    def packed_sequences(self, features, pad_token_id):
        return [f["input_ids"] for f in features] + [f["input_ids_swapped"] for f in features], {}

    def packed_shape(self, last, examples):
        return last.view(2, examples).T.contiguous()  # (examples, 2): forward, swapped


class Choices(InputFormat):
    """`start context delim choice_i extract` for every candidate; examples with fewer candidates get
    one-token placeholders and `choice_mask`."""

    name = "choices"
    features = staticmethod(choice_features)
    collator_class = ChoiceCollator
    packs = True

    def packed_sequences(self, features, pad_token_id):
        sizes = [len(f["input_ids"]) for f in features]
        num_choices = max(sizes)
        sequences = []
        for f, size in zip(features, sizes):
            sequences.extend(f["input_ids"])
            sequences.extend([[pad_token_id]] * (num_choices - size))
        extra = {}
        if min(sizes) != num_choices:
            extra["choice_mask"] = (torch.arange(num_choices) < torch.tensor(sizes)[:, None]).long()
        return sequences, extra

    def packed_shape(self, last, examples):
        return last.view(examples, -1)


class Span(InputFormat):
    """Extractive QA windows (`question delim context-window`), several per example (see span.py)."""

    name = "span"
    features = staticmethod(span.span_features)
    collator_class = SpanCollator
    row_key = "feature_index"
    needs_row_ids = True

    def featurize(self, rows, tokenizer, task, training, where):
        log.info("tokenizing %s (%d rows)", where, len(rows))
        features = self.tokenize(rows, tokenizer, task, training, where)
        truncated = int(sum(features["truncated"]))
        features, without_answer = span.finalize(features.remove_columns("truncated"), rows, training, where)
        if truncated:
            log.warning("%s: %d of %d examples longer than task.max_length=%d were truncated", where, truncated, len(rows), task.max_length)
        return features, {"truncated": truncated, "features": len(features), "windows_without_answer": without_answer}


class Blocks(InputFormat):
    """Language modelling: documents -> one token stream -> blocks of task.max_length (see blocks.py).
    Blocks are never padded, so there is no length to group by: every mode reads them in random order."""

    name = "blocks"
    features = staticmethod(blocks.document_tokens)

    def featurize(self, rows, tokenizer, task, training, where):
        return blocks.featurize(rows, tokenizer, task, training, where)

    def collator(self, tokenizer, pad_to_multiple_of=None):
        return BlockCollator()

    def training_batching(self, mode):
        return "random"


FORMATS: dict[str, InputFormat] = {fmt.name: fmt for fmt in (Text(), TextBothOrders(), Choices(), Span(), Blocks())}


def make_collator(input_format: str, tokenizer, pad_to_multiple_of=None):
    """The padded collator of a format."""
    return FORMATS[input_format].collator(tokenizer, pad_to_multiple_of)
