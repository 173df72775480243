"""Extractive question answering (SQuAD v1.1): context windows in, answer strings out.

GPT-2 reads left to right, so every feature is `question delim context-window` (the tokenizer's
pair template, see formats.py): each context token has already seen the question. A context
longer than `task.max_length` is cut into overlapping windows (`head_args.stride` tokens shared
by consecutive windows), so no part of it is lost.

- Training: each window is labelled with the token positions of the answer's first and last
  character. Windows that do not contain the whole answer are dropped and counted.
- Evaluation: every window is kept with its `example_id` and the character offsets of its context
  tokens (None for question and template tokens). `postprocess` turns the start/end scores of all
  windows of an example into one answer string, cut from the original context by those offsets.

Offsets of GPT-2's byte-level tokens include the leading space of a word (" Austen"), so answer
strings are stripped.
"""

from __future__ import annotations

import logging
from collections import defaultdict

import numpy as np

from finetune.errors import DataError

log = logging.getLogger(__name__)

DEFAULTS = {"stride": 128, "max_answer_length": 30, "n_best": 20}


def span_args(args: dict) -> dict:
    """`head_args` of a span task with defaults filled in and checked."""
    unknown = set(args) - set(DEFAULTS)
    if unknown:
        raise DataError(f"task.head_args has unknown key(s) {sorted(unknown)} for the span head; known: {', '.join(DEFAULTS)}")
    out = {**DEFAULTS, **args}
    for key, value in out.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < (0 if key == "stride" else 1):
            raise DataError(f"task.head_args.{key} = {value!r}: expected an integer >= {0 if key == 'stride' else 1}")
    return out


def _question_budget(tokenizer, max_length: int, stride: int) -> int:
    """Most question tokens a window may hold.

    Half of what the template and the stride leave free, so every window holds at least that
    many new context tokens besides the `stride` tokens it shares with the previous one.
    """
    free = max_length - tokenizer.num_special_tokens_to_add(pair=True) - stride
    if free < 2:
        raise DataError(
            f"task.head_args.stride = {stride} leaves no room for question and context in a window of "
            f"task.max_length = {max_length} tokens; lower the stride or raise max_length"
        )
    return free // 2


def _cut_questions(tokenizer, questions: list[str], budget: int) -> tuple[list[str], set[int]]:
    """Shorten questions longer than `budget` tokens (at a token boundary), and say which."""
    encoded = tokenizer(questions, add_special_tokens=False, return_offsets_mapping=True)
    cut = set()
    for i, offsets in enumerate(encoded["offset_mapping"]):
        keep = budget
        while len(offsets) > budget and keep > 0:
            shorter = questions[i][: offsets[keep - 1][1]]
            if len(tokenizer(shorter, add_special_tokens=False)["input_ids"]) <= budget:
                questions[i] = shorter
                cut.add(i)
                break
            keep -= 1
    return questions, cut


def answer_chars(answers: dict, where: str) -> tuple[int, int]:
    """(start, end) character span of the first gold answer."""
    texts, starts = answers.get("text") or [], answers.get("answer_start") or []
    if not texts or not starts:
        raise DataError(f"{where}: no answer (SQuAD v1.1 training needs one answer per question)")
    return int(starts[0]), int(starts[0]) + len(texts[0])


def span_features(batch, tokenizer, max_length: int, args: dict, training: bool) -> dict:
    """Question + context windows. Columns: input_ids, attention_mask, truncated, and

    training: start_positions, end_positions (token indices in the window) and `drop` (the window
    does not contain the answer); evaluation: example_id and offset_mapping (context tokens only).
    """
    args = span_args(args)
    budget = _question_budget(tokenizer, max_length, args["stride"])
    questions = [str(q).strip() for q in batch["question"]]
    questions, cut = _cut_questions(tokenizer, questions, budget)
    encoded = tokenizer(
        questions,
        list(batch["context"]),
        truncation="only_second",
        max_length=max_length,
        stride=args["stride"],
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding=False,
    )
    sample_map = encoded["overflow_to_sample_mapping"]
    out = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"], "truncated": []}
    if training:
        out.update(start_positions=[], end_positions=[], drop=[])
    else:
        out.update(example_id=[], offset_mapping=[])
    seen = set()
    for i, example in enumerate(sample_map):
        out["truncated"].append(example in cut and example not in seen)
        seen.add(example)
        sequence_ids = encoded.sequence_ids(i)
        offsets = encoded["offset_mapping"][i]
        if not training:
            out["example_id"].append(batch["id"][example])
            out["offset_mapping"].append([list(o) if s == 1 else None for o, s in zip(offsets, sequence_ids)])
            continue
        context = [j for j, s in enumerate(sequence_ids) if s == 1]
        start_char, end_char = answer_chars(batch["answers"][example], f"question id {batch['id'][example]!r}")
        if not context or offsets[context[0]][0] > start_char or offsets[context[-1]][1] < end_char:
            out["start_positions"].append(0)
            out["end_positions"].append(0)
            out["drop"].append(True)
            continue
        start = next(j for j in context if offsets[j][1] > start_char)
        end = next(j for j in reversed(context) if offsets[j][0] < end_char)
        out["start_positions"].append(start)
        out["end_positions"].append(max(start, end))
        out["drop"].append(False)
    return out


def finalize(features, rows, training: bool, where: str):
    """Drop training windows without the answer (returns how many); index evaluation features.

    Evaluation features get `feature_index` (their row in the dataset), which the collator passes
    along so gathered scores are matched to their offsets whatever order processes return them in.
    Rows without an `answers` column (questions to answer, finetune.inference) need no gold answer.
    """
    if training:
        drop = features["drop"]
        dropped = int(sum(drop))
        features = features.select([i for i, d in enumerate(drop) if not d]).remove_columns("drop")
        if dropped:
            log.info("%s: %d training windows do not contain the answer and were dropped", where, dropped)
        if len(features) == 0:
            raise DataError(f"{where}: no training window contains its answer (check answer_start and task.max_length)")
        return features, dropped
    ids = rows["id"]
    if len(set(ids)) != len(ids):
        seen = set()
        duplicate = next(i for i in ids if i in seen or seen.add(i))
        raise DataError(f"{where}: question id {duplicate!r} occurs more than once (span QA needs unique ids)")
    for example_id, answers in zip(ids, rows["answers"] if "answers" in rows.column_names else ()):
        if not (answers or {}).get("text"):
            raise DataError(f"{where}: question id {example_id!r} has no gold answer to score against")
    return features.add_column("feature_index", list(range(len(features)))), 0


def postprocess(
    example_ids: list,
    contexts: list[str],
    feature_example_ids: list,
    feature_offsets: list[list],
    start_logits: list,
    end_logits: list,
    n_best: int = 20,
    max_answer_length: int = 30,
) -> dict:
    """The best answer string per example id.

    For every window of an example, the `n_best` highest start and end scores among context tokens
    are paired; pairs with end < start or longer than `max_answer_length` tokens are invalid; the
    valid pair with the highest start + end score over all windows is cut out of the context by its
    character offsets. An example with no valid pair gets the empty answer.
    """
    by_example = defaultdict(list)
    for index, example_id in enumerate(feature_example_ids):
        by_example[example_id].append(index)
    answers = {}
    for example_id, context in zip(example_ids, contexts):
        best_score, best_text = -np.inf, ""
        for index in by_example.get(example_id, []):
            offsets = feature_offsets[index]
            valid = np.array([o is not None for o in offsets], dtype=bool)
            if not valid.any():
                continue
            length = len(offsets)
            start = np.asarray(start_logits[index], dtype=np.float64)[:length]
            end = np.asarray(end_logits[index], dtype=np.float64)[:length]
            start = np.where(valid, start, -np.inf)
            end = np.where(valid, end, -np.inf)
            k = min(n_best, int(valid.sum()))
            starts = np.argsort(-start, kind="stable")[:k]
            ends = np.argsort(-end, kind="stable")[:k]
            scores = start[starts][:, None] + end[ends][None, :]
            span = ends[None, :] - starts[:, None]
            scores = np.where((span >= 0) & (span < max_answer_length), scores, -np.inf)
            i, j = np.unravel_index(np.argmax(scores), scores.shape)
            if scores[i, j] > best_score:
                best_score = scores[i, j]
                best_text = context[offsets[starts[i]][0] : offsets[ends[j]][1]].strip()
        answers[example_id] = best_text
    return answers
