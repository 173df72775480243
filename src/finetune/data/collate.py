"""Dynamic padding at batch time, one collator per input format (right padding, see formats.py)."""

from __future__ import annotations

import torch
from transformers import DataCollatorWithPadding


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
        if "labels" in features[0]:
            batch["labels"] = torch.tensor([f["labels"] for f in features])
        return batch


class ChoiceCollator:
    """Flattens (examples x choices) sequences, pads them together, and restores the 3-D shape."""

    def __init__(self, tokenizer, pad_to_multiple_of=None):
        self.tokenizer = tokenizer
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features):
        sizes = {len(f["input_ids"]) for f in features}
        if len(sizes) != 1:
            raise ValueError(f"examples in one batch have different numbers of choices: {sorted(sizes)}")
        num_choices = sizes.pop()
        flat = [
            {"input_ids": ids, "attention_mask": mask}
            for f in features
            for ids, mask in zip(f["input_ids"], f["attention_mask"])
        ]
        padded = self.tokenizer.pad(flat, padding=True, pad_to_multiple_of=self.pad_to_multiple_of, return_tensors="pt")
        batch = {key: value.view(len(features), num_choices, -1) for key, value in padded.items()}
        if "labels" in features[0]:
            batch["labels"] = torch.tensor([f["labels"] for f in features])
        return batch


def make_collator(input_format: str, tokenizer, pad_to_multiple_of=None):
    if input_format == "text":
        return DataCollatorWithPadding(tokenizer, pad_to_multiple_of=pad_to_multiple_of, return_tensors="pt")
    if input_format == "text_both_orders":
        return PairCollator(tokenizer, pad_to_multiple_of)
    if input_format == "choices":
        return ChoiceCollator(tokenizer, pad_to_multiple_of)
    raise ValueError(f"no collator for input format '{input_format}'")
