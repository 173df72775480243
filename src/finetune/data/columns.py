"""Map a source's columns onto the roles a head reads, and labels onto class ids.

Roles: `text`, `text_pair` and `label` (classification, entailment, similarity); `context`,
`choices` and `label` (multiple choice); `id`, `question`, `context` and `answers` (span QA).
A role maps to one column, to a list of columns (joined with spaces; for `choices`, one column
per candidate) or to a dotted path into a nested column (`choices.text`).
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field

import numpy as np
from datasets import ClassLabel, Dataset

from finetune.errors import DataError

DROPPED = -1  # marks a row whose label is unknown when task.on_unknown_label=drop


@dataclass
class FileRows:
    """The rows one file (or Hub split) gave a split, and where each one is in it."""

    where: str  # the file, or the Hub split
    count: int
    unit: str = "row"  # "line" in a text file
    first: int = 1  # the number of row 0 when the rows are consecutive
    numbers: np.ndarray | None = None  # the number of every row when they are not (blank or dropped lines)

    def row(self, index: int) -> str:
        number = int(self.numbers[index]) if self.numbers is not None else self.first + index
        return f"{self.where} {self.unit} {number}"

    def keep(self, indices: np.ndarray) -> FileRows:
        """The rows left after keeping only `indices` (sorted)."""
        numbers = self.numbers[indices] if self.numbers is not None else self.first + indices
        return FileRows(self.where, len(indices), self.unit, self.first, numbers)


@dataclass
class Origin:
    """Where a split came from, to name the file and line (or row) of a row in error messages."""

    description: str
    parts: list[FileRows] = field(default_factory=list)  # per file (or Hub split), in row order

    def __post_init__(self):
        self._starts = [0, *np.cumsum([part.count for part in self.parts[:-1]], dtype=np.int64).tolist()]

    def row(self, index: int) -> str:
        if not self.parts:
            return f"{self.description} row {index + 1}"
        which = bisect.bisect_right(self._starts, index) - 1
        return self.parts[which].row(index - self._starts[which])


def _column_of(path: str) -> str:
    return path.split(".", 1)[0]


def _lookup(batch: dict, path: str) -> list:
    head, *rest = path.split(".")
    values = batch[head]
    for key in rest:
        values = [value[key] if isinstance(value, dict) else None for value in values]
    return values


def check_columns(dataset: Dataset, roles: dict, required: tuple, optional: tuple, task_name: str, origin: Origin, key: str):
    for role in required:
        if role not in roles:
            raise DataError(f"task '{task_name}': {key}.columns has no '{role}' column (needed by its head)")
    unknown = set(roles) - set(required) - set(optional)
    if unknown:
        raise DataError(
            f"task '{task_name}': {key}.columns has unknown role(s) {sorted(unknown)}; "
            f"this head reads {', '.join(required + optional)}"
        )
    for role, spec in roles.items():
        for path in spec if isinstance(spec, (list, tuple)) else [spec]:
            if _column_of(path) not in dataset.column_names:
                raise DataError(
                    f"{origin.description}: column '{_column_of(path)}' ({key}.columns.{role}) not found; "
                    f"columns are: {', '.join(dataset.column_names)}"
                )


class LabelEncoder:
    """Raw label values (ints, strings, ClassLabel ids) -> class ids, or floats for regression."""

    def __init__(self, labels, label_map: dict, feature, on_unknown: str):
        self.labels = list(labels) if labels is not None else None
        self.label_map = {str(k): str(v) for k, v in label_map.items()}
        self.class_label = feature if isinstance(feature, ClassLabel) else None
        self.on_unknown = on_unknown

    @property
    def regression(self) -> bool:
        return self.labels is None

    def encode(self, raw, where: str):
        if self.regression:
            try:
                value = float(raw)
            except (TypeError, ValueError):
                raise DataError(f"{where}: label {raw!r} is not a number (regression task)") from None
            if not math.isfinite(value):
                raise DataError(f"{where}: label {raw!r} is not a finite number")
            return value
        if self.class_label is not None and isinstance(raw, int) and raw >= 0:
            raw = self.class_label.int2str(raw)
        name = str(raw).strip()
        name = self.label_map.get(name, name)
        if name in self.labels:
            return self.labels.index(name)
        if self.on_unknown == "drop":
            return DROPPED
        raise DataError(
            f"{where}: label {raw!r} is not in the label set {self.labels}"
            + (f" (task label_map: {self.label_map})" if self.label_map else "")
            + "; fix the data, extend task.labels / label_map, or set task.on_unknown_label=drop"
        )


EMPTY = "__empty__"  # temporary column: the row has an empty text (task.on_empty_text=drop)


def standardize(
    dataset: Dataset, roles: dict, encoder: LabelEncoder | None, origin: Origin, text_roles: tuple, on_empty_text: str = "error"
) -> tuple[Dataset, int, int]:
    """Return the dataset with one column per role (labels encoded) and the numbers of rows dropped
    for an unknown label (task.on_unknown_label=drop) and for an empty text (task.on_empty_text=drop)."""

    def convert(batch, indices):
        out = {}
        for role, spec in roles.items():
            if role == "choices" and isinstance(spec, (list, tuple)):
                columns = [_lookup(batch, path) for path in spec]
                out[role] = [list(values) for values in zip(*columns)]
            elif isinstance(spec, (list, tuple)):
                columns = [_lookup(batch, path) for path in spec]
                out[role] = [" ".join(str(v).strip() for v in values) for values in zip(*columns)]
            else:
                out[role] = _lookup(batch, spec)
        empty = [False] * len(indices)
        for role in text_roles:
            if role not in out:
                continue
            for row, (index, value) in enumerate(zip(indices, out[role])):
                items = value if isinstance(value, list) else [value]
                if not items or any(v is None or not str(v).strip() for v in items):
                    if on_empty_text != "drop":
                        raise DataError(
                            f"{origin.row(index)}: empty {role!r} ({roles[role]}); fix the data or set task.on_empty_text=drop"
                        )
                    empty[row] = True
        if "label" in out:
            out["label"] = [encoder.encode(raw, origin.row(i)) for i, raw in zip(indices, out["label"])]
        if on_empty_text == "drop":
            out[EMPTY] = empty
        return out

    converted = dataset.map(
        convert, batched=True, with_indices=True, remove_columns=dataset.column_names, desc="Reading columns"
    )
    dropped_empty = 0
    if on_empty_text == "drop":
        kept = converted.filter(lambda empty: [not e for e in empty], input_columns=EMPTY, batched=True)
        dropped_empty = len(converted) - len(kept)
        converted = kept.remove_columns(EMPTY)
    if encoder is None or encoder.regression or encoder.on_unknown != "drop":
        return converted, 0, dropped_empty
    kept = converted.filter(lambda labels: [label != DROPPED for label in labels], input_columns="label", batched=True)
    return kept, len(converted) - len(kept), dropped_empty
