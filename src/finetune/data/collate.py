"""Dynamic padding at batch time, one collator per input format (right padding, see formats.py)."""

from __future__ import annotations

from itertools import chain

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


def make_collator(input_format: str, tokenizer, pad_to_multiple_of=None):
    if input_format == "text":
        return TextCollator(tokenizer, pad_to_multiple_of)
    if input_format == "text_both_orders":
        return PairCollator(tokenizer, pad_to_multiple_of)
    if input_format == "choices":
        return ChoiceCollator(tokenizer, pad_to_multiple_of)
    if input_format == "span":
        return SpanCollator(tokenizer, pad_to_multiple_of)
    if input_format == "blocks":
        return BlockCollator()
    raise ValueError(f"no collator for input format '{input_format}'")
