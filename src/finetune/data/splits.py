"""Splits carved out of another split: `splits: {validation: {from: train, fraction: 0.1}}`, and folds.

The carved rows are removed from the split they came from. Which rows is a pure function of the
rows, the label column and `split_seed` (never the training `seed`), so runs with different seeds
evaluate on the same examples. Classification splits are carved stratified by label: every label
keeps its share (rounded so that the total is exact); `position: end` takes the last rows instead
(text streams, where a random line would share context with its neighbours in train).

K-fold cross-validation (`folds: K`, `fold: i`) is the same draw repeated: fold 0 is a carve of
1/K of the rows, fold 1 a carve of 1/(K-1) of the rest, and so on, so fold 0 of K holds exactly
the rows that `{fraction: 1/K}` would carve, every row is in exactly one fold, and each fold has
every label's share.
"""

from __future__ import annotations

import math

import numpy as np
from datasets import Dataset
from omegaconf import DictConfig

from finetune.errors import DataError

CARVE_KEYS = ("from", "fraction", "position")
POSITIONS = ("random", "end")


def quotas(counts: list[int], fraction: float) -> list[int]:
    """Rows to take from each group: the shares fraction * count, rounded so they sum to
    round(fraction * total) (largest remainders first, earlier groups on ties)."""
    shares = [fraction * n for n in counts]
    taken = [math.floor(s) for s in shares]
    missing = round(fraction * sum(counts)) - sum(taken)
    by_remainder = sorted(range(len(counts)), key=lambda i: (-(shares[i] - taken[i]), i))
    for i in by_remainder[:max(missing, 0)]:
        taken[i] += 1
    return taken


def carve_indices(size: int, fraction: float, seed: int, strata: list | None = None, position: str = "random") -> np.ndarray:
    """Sorted row indices of the carved part."""
    if position == "end":
        return np.arange(size - round(fraction * size), size)
    rng = np.random.default_rng(seed)
    if strata is None:
        return np.sort(rng.permutation(size)[: round(fraction * size)])
    keys = sorted(set(strata), key=str)
    groups = [np.flatnonzero(np.asarray([s == key for s in strata])) for key in keys]
    chosen = [rng.permutation(group)[:take] for group, take in zip(groups, quotas([len(g) for g in groups], fraction))]
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)


def is_carve(entry) -> bool:
    return isinstance(entry, DictConfig) and "from" in entry


def check_carve(entry, split: str, key: str, splits: dict) -> tuple[str, float, str]:
    """(source split, fraction, position) of a carve entry, checked. On the Hub (key task.hub) a split
    that `splits` does not name is the Hub split of that name, so any other split may be the source."""
    unknown = set(entry) - set(CARVE_KEYS)
    if unknown:
        raise DataError(f"{key}.splits.{split}: unknown key(s) {sorted(unknown)}; a carved split takes {', '.join(CARVE_KEYS)}")
    source, fraction, position = entry["from"], entry.get("fraction"), entry.get("position", "random")
    if not isinstance(source, str) or source == split or (source not in splits and key != "task.hub"):
        raise DataError(f"{key}.splits.{split}: from={source!r} is not another split of the task (it has {', '.join(splits)})")
    if not isinstance(fraction, (int, float)) or isinstance(fraction, bool) or not 0 < fraction < 1:
        raise DataError(f"{key}.splits.{split}.fraction = {fraction!r}: expected a number between 0 and 1")
    if position not in POSITIONS:
        raise DataError(f"{key}.splits.{split}.position = {position!r}: expected one of {', '.join(POSITIONS)}")
    return source, float(fraction), position


def carve(dataset: Dataset, fraction: float, seed: int, label_column: str | None, position: str, where: str) -> tuple[Dataset, Dataset, dict]:
    """(rest, carved, description) of `dataset`; stratified by `label_column` when it is given."""
    strata = None
    if label_column is not None and position == "random" and label_column in dataset.column_names:
        strata = [str(value) for value in dataset[label_column]]
    carved = carve_indices(len(dataset), fraction, seed, strata, position)
    if len(carved) == 0 or len(carved) == len(dataset):
        raise DataError(f"{where}: fraction {fraction} of {len(dataset)} rows leaves an empty split; change the fraction")
    rest = np.setdiff1d(np.arange(len(dataset)), carved, assume_unique=True)
    description = {"fraction": fraction, "split_seed": seed if position == "random" else None, "position": position,
                   "stratified_by_label": strata is not None}
    return dataset.select(rest), dataset.select(carved), description


def fold_indices(size: int, folds: int, seed: int, strata: list | None = None) -> list[np.ndarray]:
    """Sorted row indices of each fold: a partition of range(size), stratified by `strata`."""
    remaining = np.arange(size)
    parts = []
    for fold in range(folds):
        rest_strata = None if strata is None else [strata[i] for i in remaining]
        chosen = carve_indices(len(remaining), 1 / (folds - fold), seed, rest_strata)
        parts.append(remaining[chosen])
        remaining = np.delete(remaining, chosen)
    return parts


def check_folds(source, key: str, train_split: str, eval_splits: list[str]) -> str | None:
    """The split that is the held-out fold when `{key}.folds` is set (the first eval split), else None."""
    if source.folds is None:
        return None
    held_out = eval_splits[0] if eval_splits else None
    if held_out is None or held_out == train_split:
        raise DataError(f"{key}.folds={source.folds}: the first of task.eval_splits ({eval_splits}) is the held-out fold, "
                        f"and it must be another split than task.train_split '{train_split}'")
    if held_out in source.splits:
        raise DataError(
            f"{key}.folds={source.folds} makes '{held_out}' fold {source.fold} of '{train_split}', but {key}.splits.{held_out} "
            f"is given too; remove {key}.splits.{held_out} or unset {key}.folds"
        )
    return held_out


def take_fold(dataset: Dataset, folds: int, fold: int, seed: int, label_column: str | None, where: str) -> tuple[Dataset, Dataset, dict]:
    """(the other folds, fold `fold`, description) of `dataset`; stratified by `label_column` when it is given."""
    if len(dataset) < folds:
        raise DataError(f"{where}: {len(dataset)} rows cannot make {folds} folds; lower folds")
    strata = None
    if label_column is not None and label_column in dataset.column_names:
        strata = [str(value) for value in dataset[label_column]]
    parts = fold_indices(len(dataset), folds, seed, strata)
    rest = np.sort(np.concatenate([part for i, part in enumerate(parts) if i != fold]))
    description = {"folds": folds, "fold": fold, "split_seed": seed, "stratified_by_label": strata is not None}
    return dataset.select(rest), dataset.select(parts[fold]), description
