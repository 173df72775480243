"""Map a source's columns onto the roles a head reads, and labels onto class ids.

Roles: `text`, `text_pair` and `label` (classification, entailment, similarity); `context`,
`choices` and `label` (multiple choice); `id`, `question`, `context` and `answers` (span QA).
A role maps to one column, to a list of columns (joined with spaces; for `choices`, one column
per candidate) or to a dotted path into a nested column (`choices.text`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from datasets import ClassLabel, Dataset

from finetune.errors import DataError

DROPPED = -1  # marks a row whose label is unknown when task.on_unknown_label=drop


@dataclass
class Origin:
    """Where a split came from, to name file and row in error messages."""

    description: str
    first_row_line: int | None  # line number of data row 0 in a text file, None for other sources

    def row(self, index: int) -> str:
        if self.first_row_line is None:
            return f"{self.description} row {index + 1}"
        return f"{self.description} line {index + self.first_row_line}"


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
