"""Columns cut out of a line by a regular expression: `pattern: '(?P<label>[A-Z]+):\\S+ (?P<text>.+)'`.

The pattern must match the whole line of a `lines` file (or the whole value of `pattern_column`
in any other format); its named groups become string columns. A line that does not match is an
error naming its file and line, or, with `on_unmatched: drop`, skipped and counted.
"""

from __future__ import annotations

import re

import numpy as np

from finetune.data.columns import FileRows
from finetune.errors import DataError

ON_UNMATCHED = ("error", "drop")


def compile_pattern(pattern, key: str) -> re.Pattern:
    """The compiled pattern of `{key}.pattern`; one line naming the key if it is no regex or names no group."""
    if not isinstance(pattern, str) or not pattern:
        raise DataError(f"{key}.pattern = {pattern!r}: expected a regular expression with named groups")
    try:
        compiled = re.compile(pattern)
    except re.error as err:
        raise DataError(f"{key}.pattern = {pattern!r}: not a valid regular expression ({err})") from None
    if not compiled.groupindex:
        raise DataError(
            f"{key}.pattern = {pattern!r} has no named groups; name the parts that become columns, "
            f"e.g. (?P<label>...) and (?P<text>...)"
        )
    return compiled


def _preview(value, width: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 4] + "...'"


def match_lines(values: list, compiled: re.Pattern, key: str, rows: FileRows, on_unmatched: str) -> tuple[dict, np.ndarray]:
    """(group -> values of the matching rows, indices of those rows); an unmatched group gives ""."""
    names = list(compiled.groupindex)
    columns = {name: [] for name in names}
    kept = []
    for index, value in enumerate(values):
        found = compiled.fullmatch(value) if isinstance(value, str) else None
        if found is None:
            if on_unmatched == "drop":
                continue
            raise DataError(
                f"{rows.row(index)}: {_preview(value)} does not match {key}.pattern {compiled.pattern!r} (the whole "
                f"line must match); fix the line or set {key}.on_unmatched=drop"
            )
        kept.append(index)
        for name in names:
            columns[name].append(found.group(name) or "")
    return columns, np.asarray(kept, dtype=np.int64)
