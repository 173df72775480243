"""Turn standardised rows into token ids: the map functions of the sequence formats (finetune.data.input_formats;
span QA windows: span.py, language-model documents: blocks.py).

Each featurizer takes a batch of rows (the roles of `columns.py`) and returns model inputs plus a
boolean `truncated` column, so the number of examples cut to `task.max_length` can be reported.
`training` tells formats whose training features differ from evaluation ones (span QA) apart.
"""

from __future__ import annotations

from finetune.data.formats import encode


def text_features(batch, tokenizer, max_length: int, args: dict, training: bool) -> dict:
    """One sequence per example: `start text extract` or `start text delim text_pair extract`."""
    pairs = batch.get("text_pair")
    encoded, cut = encode(tokenizer, batch["text"], pairs, max_length)
    return {**encoded, "truncated": [i in cut for i in range(len(batch["text"]))]}


def both_orders_features(batch, tokenizer, max_length: int, args: dict, training: bool) -> dict:
    """Similarity (GPT-1): the pair in both orders; the head adds the two pooled states."""
    forward, cut = encode(tokenizer, batch["text"], batch["text_pair"], max_length)
    swapped, cut_swapped = encode(tokenizer, batch["text_pair"], batch["text"], max_length)
    return {
        "input_ids": forward["input_ids"],
        "attention_mask": forward["attention_mask"],
        "input_ids_swapped": swapped["input_ids"],
        "attention_mask_swapped": swapped["attention_mask"],
        "truncated": [i in cut or i in cut_swapped for i in range(len(batch["text"]))],
    }


def choice_features(batch, tokenizer, max_length: int, args: dict, training: bool) -> dict:
    """Multiple choice (GPT-1): `start context delim choice_i extract` for every candidate.

    The context is cut first when a sequence is too long, so answers stay whole (unless an answer
    alone fills the window: then it is cut too, see formats.encode).
    """
    sizes = [len(choices) for choices in batch["choices"]]
    contexts = [context for context, size in zip(batch["context"], sizes) for _ in range(size)]
    answers = [str(choice) for choices in batch["choices"] for choice in choices]
    encoded, cut = encode(tokenizer, contexts, answers, max_length, truncation="only_first")
    input_ids, attention_mask, truncated, offset = [], [], [], 0
    for size in sizes:
        input_ids.append(encoded["input_ids"][offset : offset + size])
        attention_mask.append(encoded["attention_mask"][offset : offset + size])
        truncated.append(any(offset + j in cut for j in range(size)))
        offset += size
    return {"input_ids": input_ids, "attention_mask": attention_mask, "truncated": truncated}
