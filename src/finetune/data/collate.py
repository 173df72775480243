"""Dynamic padding at batch time (right padding, see formats.py), and padding-free packed batches
(`PackedCollator`). Which collator a format uses is its entry's choice (finetune.data.input_formats)."""

from __future__ import annotations

from itertools import chain

import numpy as np
import torch

from finetune.data.blocks import IGNORE_INDEX


class TextCollator:
    """One right-padded sequence per example, built straight from the token lists.

    Does what `DataCollatorWithPadding` does for these features at about half the cost per batch
    (one tensor from the concatenated ids, filled under a length mask; no `tokenizer.pad`).
    The featurizers never pad, so the attention mask is rebuilt from the lengths. Other columns
    (labels) become tensors as they are.
    """

    def __init__(self, tokenizer, pad_to_multiple_of=None):
        self.pad_token_id = tokenizer.pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features):
        sequences = [f["input_ids"] for f in features]
        lengths = torch.tensor([len(s) for s in sequences])
        width = int(lengths.max())
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        mask = torch.arange(width) < lengths[:, None]
        input_ids = torch.full((len(sequences), width), self.pad_token_id, dtype=torch.long)
        input_ids[mask] = torch.tensor(list(chain.from_iterable(sequences)), dtype=torch.long)
        batch = {"input_ids": input_ids, "attention_mask": mask.long()}
        for key in features[0]:
            if key not in batch:
                batch[key] = torch.tensor([f[key] for f in features])
        return batch


class PairCollator:
    """Pads the forward and swapped orders of a similarity pair to one common length."""

    def __init__(self, tokenizer, pad_to_multiple_of=None):
        self.tokenizer = tokenizer
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features):
        forward = [{"input_ids": f["input_ids"], "attention_mask": f["attention_mask"]} for f in features]
        swapped = [{"input_ids": f["input_ids_swapped"], "attention_mask": f["attention_mask_swapped"]} for f in features]
        length = max(len(x["input_ids"]) for x in forward + swapped)
        pad = dict(padding="max_length", max_length=length, pad_to_multiple_of=self.pad_to_multiple_of, return_tensors="pt")
        a, b = self.tokenizer.pad(forward, **pad), self.tokenizer.pad(swapped, **pad)
        batch = {
            "input_ids": a["input_ids"],
            "attention_mask": a["attention_mask"],
            "input_ids_swapped": b["input_ids"],
            "attention_mask_swapped": b["attention_mask"],
        }
        for key in ("labels", "index"):
            if key in features[0]:
                batch[key] = torch.tensor([f[key] for f in features])
        return batch


class ChoiceCollator:
    """Flattens (examples x choices) sequences, pads them together, and restores the 3-D shape.

    When examples in a batch have different numbers of candidates (ARC on the Hub has 3 to 5),
    the short ones are filled with one-token placeholder candidates and `choice_mask` (examples x
    choices, 1 for real candidates) tells the head to ignore them.
    """

    def __init__(self, tokenizer, pad_to_multiple_of=None):
        self.tokenizer = tokenizer
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features):
        sizes = [len(f["input_ids"]) for f in features]
        num_choices = max(sizes)
        placeholder = {"input_ids": [self.tokenizer.pad_token_id], "attention_mask": [1]}
        flat = []
        for f, size in zip(features, sizes):
            flat.extend({"input_ids": ids, "attention_mask": mask} for ids, mask in zip(f["input_ids"], f["attention_mask"]))
            flat.extend([placeholder] * (num_choices - size))
        padded = self.tokenizer.pad(flat, padding=True, pad_to_multiple_of=self.pad_to_multiple_of, return_tensors="pt")
        batch = {key: value.view(len(features), num_choices, -1) for key, value in padded.items()}
        if min(sizes) != num_choices:
            batch["choice_mask"] = (torch.arange(num_choices) < torch.tensor(sizes)[:, None]).long()
        for key in ("labels", "index"):
            if key in features[0]:
                batch[key] = torch.tensor([f[key] for f in features])
        return batch


class SpanCollator:
    """Extractive QA windows: pads the model inputs only; offsets and example ids stay in the dataset.

    Training batches carry `labels` = (start, end) token positions, shape (batch, 2); evaluation
    batches carry `feature_index`, the row of each window in the evaluation dataset.
    """

    def __init__(self, tokenizer, pad_to_multiple_of=None):
        self.tokenizer = tokenizer
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features):
        inputs = [{"input_ids": f["input_ids"], "attention_mask": f["attention_mask"]} for f in features]
        padded = self.tokenizer.pad(inputs, padding=True, pad_to_multiple_of=self.pad_to_multiple_of, return_tensors="pt")
        batch = {"input_ids": padded["input_ids"], "attention_mask": padded["attention_mask"]}
        if "start_positions" in features[0]:
            batch["labels"] = torch.tensor([[f["start_positions"], f["end_positions"]] for f in features])
        if "feature_index" in features[0]:
            batch["feature_index"] = torch.tensor([f["feature_index"] for f in features])
        return batch


class BlockCollator:
    """Language-model blocks (finetune.data.blocks): all exactly task.max_length tokens, so a batch is
    a plain stack; no padding, no attention mask (causal attention over real tokens only), and
    `pad_to_multiple_of` does not apply. `labels` are the inputs (the loss shifts them by one);
    positions before a strided window's `score_from` are not scored.
    """

    def __call__(self, features):
        input_ids = torch.tensor([f["input_ids"] for f in features], dtype=torch.long)
        labels = input_ids.clone()
        if "score_from" in features[0]:
            score_from = torch.tensor([f["score_from"] for f in features])
            labels[torch.arange(labels.shape[1]) < score_from[:, None]] = IGNORE_INDEX
        batch = {"input_ids": input_ids, "labels": labels}
        if "index" in features[0]:
            batch["index"] = torch.tensor([f["index"] for f in features])
        return batch


SEQUENCE_COLUMNS = ("input_ids", "attention_mask", "input_ids_swapped", "attention_mask_swapped")


def pack_rows(lengths: np.ndarray, row_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """First-fit decreasing: (row, offset in the row) of every sequence, rows of at most `row_tokens`.

    Longest first, each into the first row it still fits; a sequence longer than `row_tokens` gets a
    row of its own. Rows come out nearly full, so only the tail of a row is padding.
    """
    rows, offsets, fill = np.zeros(len(lengths), np.int64), np.zeros(len(lengths), np.int64), []
    for i in np.argsort(-lengths, kind="stable"):
        length = int(lengths[i])
        row = next((r for r, used in enumerate(fill) if used + length <= row_tokens), len(fill))
        if row == len(fill):
            fill.append(0)
        rows[i], offsets[i] = row, fill[row]
        fill[row] += length
    return rows, offsets


class PackedCollator:
    """Padding-free batches: the batch's sequences laid end to end in rows of at most `row_tokens`.

    Every sequence an example makes (one for text, both orders of a similarity pair, every
    candidate of a multiple-choice example) is placed whole into a row (`pack_rows`). The batch holds
    - `input_ids` (rows, width): the rows, right-padded to the longest row (to a multiple of
      `pad_to_multiple_of` when set);
    - `position_ids`: restarting at 0 at every sequence, so each sees the positions it would alone;
    - `sequence_ids`: 1, 2, ... for the sequences of a row, 0 on padding (which tokens belong together:
      the auxiliary LM loss never predicts across a boundary, see models.heads.lm_target_positions);
    - `last_positions`: the flat index (row * width + column) of each sequence's last token, shaped
      (examples,) for text, (examples, 2) for a pair in both orders (forward, swapped), and
      (examples, choices) for multiple choice.
    No `attention_mask`: from position ids that restart, transformers builds the block-diagonal causal
    mask itself (masking_utils.find_packed_sequence_indices; FlashAttention's variable-length path on
    a single row), which it does only without a 2-D mask and without a KV cache (see
    models.heads.encode_packed). Multiple-choice examples with fewer candidates get one-token
    placeholder candidates and `choice_mask`, as in ChoiceCollator.
    """

    def __init__(self, input_format, tokenizer, row_tokens: int | None, pad_to_multiple_of=None):
        """`input_format`: an entry of finetune.data.input_formats.FORMATS that packs (its `packed_sequences`
        gives the sequences in head order, its `packed_shape` the shape of `last_positions`)."""
        if not input_format.packs:
            raise ValueError(f"input format '{input_format.name}' is not packed")
        self.input_format = input_format
        self.pad_token_id = tokenizer.pad_token_id
        self.row_tokens = None if row_tokens is None else int(row_tokens)  # None: one row holds the whole batch
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features):
        sequences, extra = self.input_format.packed_sequences(features, self.pad_token_id)
        lengths = np.array([len(s) for s in sequences], dtype=np.int64)
        rows, offsets = pack_rows(lengths, self.row_tokens or int(lengths.sum()))
        width = int((offsets + lengths).max())
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        starts = np.cumsum(lengths) - lengths
        owner = np.repeat(np.arange(len(lengths)), lengths)  # the sequence of every token
        within = np.arange(int(lengths.sum())) - starts[owner]  # its position in its sequence
        # sequence_ids number the sequences of a row by offset: 1 for the first, 2 for the next, ...
        rank = np.lexsort((offsets, rows))
        slot = np.empty_like(rank)
        slot[rank] = np.arange(len(rank)) - np.searchsorted(rows[rank], rows[rank])
        flat = torch.from_numpy(rows[owner] * width + offsets[owner] + within)
        count = int(rows.max()) + 1
        input_ids = torch.full((count * width,), self.pad_token_id, dtype=torch.long)
        input_ids[flat] = torch.tensor(list(chain.from_iterable(sequences)), dtype=torch.long)
        position_ids = torch.zeros(count * width, dtype=torch.long)
        position_ids[flat] = torch.from_numpy(within)
        sequence_ids = torch.zeros(count * width, dtype=torch.long)
        sequence_ids[flat] = torch.from_numpy(slot[owner] + 1)
        batch = {
            "input_ids": input_ids.view(count, width),
            "position_ids": position_ids.view(count, width),
            "sequence_ids": sequence_ids.view(count, width),
            "last_positions": self.input_format.packed_shape(torch.from_numpy(rows * width + offsets + lengths - 1), len(features)),
            **extra,
        }
        for key in features[0]:
            if key not in batch and key not in SEQUENCE_COLUMNS:
                batch[key] = torch.tensor([f[key] for f in features])
        return batch
