"""Language-modelling features: documents -> one token stream -> fixed-size blocks (or strided windows).

Every document is tokenized and gets an end-of-text token, so documents never run into each
other; the documents of a split are concatenated and cut into blocks of `task.max_length` tokens.
The tokens after the last full block are dropped and counted. Both steps are `datasets.map` calls,
cached like every other feature; the second reads the whole split as one Arrow batch, so only the
split's end leaves a remainder (not every 1,000 documents, as mapping in batches would).

Evaluation with `head_args.stride` (S < max_length) slides a window of max_length tokens over the
whole stream instead, S tokens at a time: every token but the stream's first is scored exactly
once, each with at least max_length - S tokens of context (the first window scores all of its own).
No block or window is ever padded.

A document is a row's `text`; with the optional roles `choices` and `label`, the labelled choice is
appended to it (Story Cloze as plain stories: the four sentences and the right ending).
"""

from __future__ import annotations

import logging

import numpy as np
import pyarrow.compute as pc
from datasets import Dataset

from finetune.data.cache import tokenize_map
from finetune.errors import DataError

log = logging.getLogger(__name__)

IGNORE_INDEX = -100  # label of a position that is not scored (cross_entropy's default ignore_index)


def documents_of(batch) -> list[str]:
    """The text of each row's document, trailing whitespace dropped (the end-of-text token ends it);
    with `choices` and `label`, the labelled choice appended."""
    texts = [str(t).rstrip() for t in batch["text"]]
    if "choices" in batch:
        texts = [f"{text} {str(choices[label]).strip()}" for text, choices, label in
                 zip(texts, batch["choices"], batch["label"])]
    return texts


def document_tokens(batch, tokenizer, max_length: int, args: dict, training: bool) -> dict:
    """Token ids of each non-blank document followed by the end-of-text token (no input template)."""
    texts = [text for text in documents_of(batch) if text.strip()]
    ids = tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"] if texts else []
    return {"input_ids": [row + [tokenizer.eos_token_id] for row in ids]}


def window_bounds(total: int, length: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """(start, first scored position) of each strided window over a stream of `total` tokens.

    Windows end at length, length + stride, ... and finally at `total`; each is `length` tokens
    long and scores the tokens its predecessor did not reach.
    """
    ends = np.arange(length, total, stride, dtype=np.int64)
    ends = np.append(ends, total) if ends.size == 0 or ends[-1] != total else ends
    starts = ends - length
    new = np.diff(ends, prepend=0)
    score_from = np.where(starts == 0, 1, length - new)
    return starts, score_from


def _blocks(table, length: int, stride: int | None) -> dict:
    """The whole split's stream (one Arrow batch) as blocks, or as strided windows."""
    stream = pc.list_flatten(table["input_ids"]).to_numpy()
    if stride is None:
        count = len(stream) // length
        blocks = stream[: count * length].reshape(count, length)
        return {"input_ids": blocks, "index": np.arange(count)}
    starts, score_from = window_bounds(len(stream), length, stride)
    windows = np.stack([stream[s : s + length] for s in starts])
    return {"input_ids": windows, "score_from": score_from, "index": np.arange(len(starts))}


def check_stride(args: dict, max_length: int) -> int | None:
    stride = args.get("stride")
    if stride is None:
        return None
    if isinstance(stride, bool) or not isinstance(stride, int) or not 1 <= stride < max_length:
        raise DataError(f"task.head_args.stride={stride!r}: expected an integer in [1, task.max_length - 1 = {max_length - 1}] "
                        f"(tokens a window moves; each scored token keeps >= max_length - stride of context), or null for blocks")
    return stride


def featurize(rows: Dataset, tokenizer, task, training: bool, where: str) -> tuple[Dataset, dict]:
    """Blocks (training, and evaluation without a stride) or strided windows of one split, and their counts."""
    length = task.max_length
    if ("choices" in rows.column_names) != ("label" in rows.column_names):
        raise DataError(f"{where}: the lm head appends the labelled choice to a document: give both columns.choices "
                        f"and columns.label, or neither")
    stride = None if training else check_stride(dict(task.head_args), length)
    log.info("tokenizing %s (%d documents)", where, len(rows))
    tokens = tokenize_map(rows, document_tokens, tokenizer, {"max_length": length, "args": {}, "training": training},
                          batched=True, remove_columns=rows.column_names, desc=f"Tokenizing {where}")
    total = int(pc.sum(pc.list_value_length(tokens.data.column("input_ids"))).as_py() or 0)
    if total < length:
        raise DataError(f"{where}: {total} tokens ({len(tokens)} documents, one end-of-text token each) make no block of "
                        f"task.max_length={length} tokens; use more text or a smaller task.max_length")
    features = tokens.with_format("arrow").map(
        _blocks, batched=True, batch_size=None, remove_columns=tokens.column_names,
        fn_kwargs={"length": length, "stride": stride}, desc=f"Cutting {where} into blocks of {length}",
    ).with_format(None)
    if training:
        features = features.remove_columns("index")
    count = len(features)
    if stride is None:
        predicted, dropped = count * (length - 1), total - count * length
    else:
        predicted, dropped = total - 1, 0
    stats = {"documents": len(tokens), "empty_documents": len(rows) - len(tokens), "tokens": total, "block_size": length,
             "stride": stride, "blocks": count, "predicted_tokens": predicted, "dropped_tokens": dropped}
    if dropped:
        log.info("%s: %d tokens after the last full block of %d dropped", where, dropped, length)
    return features, stats
