"""Load a task's raw splits from the Hub or from local files under `data_dir`: which files or Hub
splits make a split, with which options (the file readers themselves: finetune.data.readers).

A split is a file (a Hub split), a list of them, or a mapping with its own options; an item of a
list may itself be a mapping, `{file: a.pos, label: positive}`: one label for all of its rows.
Every file is read on its own (errors name its own lines; metrics.json says how many rows each
gave), then a split's files are joined. `format: lines` reads one example per line into a `text`
column; `pattern` cuts columns out of each line (finetune.data.patterns). `format: text` reads raw
text as documents (`document`: a line, a blank-line separated paragraph or a whole file) for
language modelling.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
from datasets import Dataset, Features, Value
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from finetune.data.columns import FileRows, Origin
from finetune.data.patterns import compile_pattern, match_lines
from finetune.data.readers import FILE_FORMATS, LINE_NUMBER, read_files
from finetune.errors import DataError, HubUnavailableError

log = logging.getLogger(__name__)

# What one row is (`document`): raw text files (format: text) split into lines, blank-line separated
# paragraphs or whole files; every other format has rows already, each a document in its text column.
TEXT_DOCUMENTS = ("line", "paragraph", "file")
TABLE_DOCUMENTS = ("column",)

# Options for reading a split's own files (e.g. a GLUE test file with a header and an id column
# where train and dev have neither): allowed on a split entry and on each item of a list of files.
READ_OPTIONS = ("header", "column_names", "encoding", "pattern", "pattern_column", "on_unmatched")
# Options of a whole split: `columns` is merged into the source's roles.
SPLIT_OPTIONS = READ_OPTIONS + ("columns", "label_map")


@dataclass
class Part:
    """One file (or Hub split) of a split, the options that apply to it, and its constant label."""

    target: str
    source: DictConfig
    key: str  # the config key that names it, for errors
    label: str | None = None
    pattern_key: str = ""  # the config key whose `pattern` applies to it


@dataclass
class RawSplit:
    """A split as read: its rows, where they came from, and what reading made of them."""

    rows: Dataset
    origin: Origin
    source: DictConfig  # the task's source with the split's own options (columns, label_map)
    files: list[dict]  # per file (or Hub split): where, rows, constant label, lines dropped by the pattern
    made: tuple  # columns made while reading (a lines file's text, pattern groups, the constant label)
    pattern: tuple | None  # (key, groups) of a pattern that made columns, for errors


def task_source(task, data_dir: str | None) -> tuple:
    """(the source config that applies, its config key): local files with data_dir, else the Hub."""
    if data_dir:
        if task.local is None:
            raise DataError(f"task '{task.name}' has no local source (task.local); unset data_dir to use the Hub")
        return task.local, "task.local"
    if task.hub is None:
        raise DataError(f"task '{task.name}' has no Hub source; set data_dir=<DIR> to read it from local files")
    return task.hub, "task.hub"


def load_splits(task, splits: list[str], data_dir: str | None, offline: bool) -> dict[str, RawSplit]:
    """Every split in `splits`, read from the source that applies (local files with data_dir)."""
    source, _ = task_source(task, data_dir)
    if data_dir:
        return _load_local(task, source, Path(data_dir).expanduser(), splits)
    return _load_hub(task, source, splits, offline)


def check_document_option(source, key: str) -> None:
    """`document` must be one the format can make rows of (None: the format's default)."""
    if source.document is None:
        return
    text = source.format == "text"
    allowed = TEXT_DOCUMENTS if text else TABLE_DOCUMENTS
    if source.document not in allowed:
        hint = ("a text file's documents are its lines, paragraphs or the whole file" if text else
                "a table's documents are its rows (the text column); use format=text for raw text files")
        raise DataError(f"{key}.document={source.document!r} is not supported by format '{source.format}' "
                        f"(choose {' or '.join(allowed)}; {hint})")


def _load_hub(task, source, splits, offline):
    check_document_option(source, "task.hub")
    loaded = {}
    for split in splits:
        parts, split_source = split_parts(task, source, split, "task.hub", default=split)
        read = [_shape_part(part, *_read_hub_part(task, part, offline)) for part in parts]
        loaded[split] = _join(read, split_source, f"task.hub.splits.{split}")
    return loaded


def _load_local(task, source, data_dir: Path, splits):
    if not data_dir.is_dir():
        raise DataError(f"data_dir '{data_dir}' does not exist or is not a directory")
    if source.format not in FILE_FORMATS:
        raise DataError(f"task '{task.name}': task.local.format '{source.format}' is not one of {', '.join(FILE_FORMATS)}")
    check_document_option(source, "task.local")
    base = data_dir / source.path
    loaded = {}
    for split in splits:
        if split not in source.splits:
            raise DataError(
                f"task '{task.name}': no local '{split}' split is configured (task.local.splits has "
                f"{', '.join(source.splits) or 'none'})"
            )
        parts, split_source = split_parts(task, source, split, "task.local")
        missing = [str(base / part.target) for part in parts if not (base / part.target).is_file()]
        if missing:
            raise DataError(
                f"task '{task.name}': local '{split}' split not found: {', '.join(missing)} "
                f"(point task.local.splits.{split}=<file> at one, or leave data_dir unset to use the Hub)"
            )
        read = [_shape_part(part, *_read_local_part(part, base / part.target)) for part in parts]
        loaded[split] = _join(read, split_source, f"task.local.splits.{split}")
    return loaded


def _entry(entry, entry_key: str, hub: bool, allowed: tuple) -> tuple[list, dict, object]:
    """(what a mapping entry names, its options, its constant label)."""
    targets = ("split",) if hub else ("file", "files")
    unknown = set(entry) - set(allowed) - set(targets) - {"label"}
    named = [target for target in targets if target in entry]
    if unknown or len(named) != 1:
        what = "split" if hub else "file (or files)"
        problem = (f"unknown key(s) {sorted(unknown)}" if unknown else f"no {what} given" if not named
                   else "both file and files given")
        whole = "; columns and label_map apply to a whole split" if unknown & {"columns", "label_map"} else ""
        raise DataError(f"{entry_key}: {problem}; an entry takes {what}, label and {', '.join(allowed)}{whole}")
    names = entry[named[0]]
    return (list(names) if isinstance(names, ListConfig) else [names]), {k: entry[k] for k in allowed if k in entry}, entry.get("label")


def _with_options(source, options: dict):
    """The source with an entry's own options. OmegaConf.merge merges mappings key by key (columns,
    label_map) and replaces lists (column_names); the composed config is in struct mode, which would
    refuse the keys an entry adds (a test file's `columns: {id: index}`), so the merge is opened."""
    if not options:
        return source
    with open_dict(source):
        return OmegaConf.merge(source, options)


def split_parts(task, source, split: str, key: str, default=None) -> tuple[list[Part], DictConfig]:
    """(the parts of a split, the source as it applies to the whole split).

    An entry is a file (Hub: a split) name, a list, or a mapping with `file`/`files` (Hub: `split`),
    `label` and any of SPLIT_OPTIONS; an item of a list (or of `files`) is a name or a mapping with
    `file`/`files` (Hub: `split`), `label` and any of READ_OPTIONS.
    """
    hub = key == "task.hub"
    entry = source.splits.get(split, default)
    entry_key = f"{key}.splits.{split}"
    label, label_key, pattern_key, list_key = None, entry_key, key, entry_key
    if isinstance(entry, DictConfig):
        names, options, label = _entry(entry, entry_key, hub, SPLIT_OPTIONS)
        split_source = _with_options(source, options)
        pattern_key = entry_key if "pattern" in options else key
        listed = isinstance(entry.get("files"), ListConfig)
        list_key = f"{entry_key}.files"
    else:
        split_source, listed = source, isinstance(entry, ListConfig)
        names = list(entry) if listed else [entry]
    parts = []
    for i, item in enumerate(names):
        item_key = f"{list_key}[{i}]" if listed else entry_key
        part_source, part_label, part_label_key, part_pattern = split_source, label, label_key, pattern_key
        if isinstance(item, DictConfig):
            item_names, options, item_label = _entry(item, item_key, hub, READ_OPTIONS)
            part_source = _with_options(split_source, options)
            if item_label is not None:
                part_label, part_label_key = item_label, item_key
            part_pattern = item_key if "pattern" in options else pattern_key
        else:
            item_names = [item]
        for name in item_names:
            if not isinstance(name, str) or not name:
                raise DataError(f"{item_key}: {name!r} is not a {'split' if hub else 'file'} name; expected a name "
                                f"or a mapping {{{'split' if hub else 'file'}: ..., label: ...}}")
            parts.append(Part(name, part_source, item_key, _check_label(task, part_label, part_label_key, split_source), part_pattern))
    return parts, split_source


def _check_label(task, label, key: str, source) -> str | None:
    """A constant label, as written, once it is known to name one of task.labels (or is a number)."""
    if label is None:
        return None
    if isinstance(label, bool) or not isinstance(label, (str, int, float)):
        raise DataError(f"{key}.label = {label!r}: expected one label name")
    raw = str(label)
    if task.labels is None:
        try:
            float(raw)
        except ValueError:
            raise DataError(f"{key}.label = {label!r}: not a number (task '{task.name}' has no task.labels: a regression task)") from None
        return raw
    name = str(source.label_map.get(raw, raw))
    if name not in task.labels:
        mapped = f" (mapped to {name!r} by label_map)" if name != raw else ""
        raise DataError(f"{key}.label = {label!r}{mapped} is not in task.labels {list(task.labels)}; fix the label or extend task.labels")
    return raw


def _first_row_line(source) -> int | None:
    if source.format in ("tsv", "csv"):
        return 2 if source.header else 1
    if source.format == "jsonl":
        return 1
    return None


def _read_local_part(part: Part, path: Path) -> tuple[Dataset, FileRows]:
    dataset = read_files(part.source, [path])
    if LINE_NUMBER in dataset.column_names:
        rows = FileRows(str(path), len(dataset), "line", numbers=np.asarray(dataset[LINE_NUMBER], dtype=np.int64))
        return dataset.remove_columns(LINE_NUMBER), rows
    first = _first_row_line(part.source)
    return dataset, FileRows(str(path), len(dataset), "row" if first is None else "line", first or 1)


def _read_hub_part(task, part: Part, offline: bool) -> tuple[Dataset, FileRows]:
    source = part.source
    try:
        dataset = datasets.load_dataset(source.path, source.name, split=part.target)
    except (ConnectionError, OSError) as err:
        if offline:
            raise HubUnavailableError(
                f"task '{task.name}' needs dataset '{source.path}' ({source.name}) from the Hub, which is "
                f"not reachable (offline); point data_dir=<DIR> at local files laid out like ../shared/data"
            ) from err
        raise DataError(f"could not load '{source.path}' ({source.name}) split '{part.target}': {err}") from err
    except ValueError as err:
        raise DataError(f"dataset '{source.path}' ({source.name}) has no split '{part.target}': {err}") from err
    return dataset, FileRows(f"{source.path}/{source.name or ''}[{part.target}]", len(dataset))


def _label_column(source) -> str:
    spec = source.columns.get("label") if source.columns else None
    return spec if isinstance(spec, str) else "label"


def _shape_part(part: Part, dataset: Dataset, rows: FileRows) -> tuple[Dataset, FileRows, dict, list, tuple | None]:
    """Apply a part's pattern and constant label: (rows, where they are, what it gave, columns made, pattern)."""
    made, pattern, dropped = [], None, None
    if part.source.pattern is not None:
        dataset, rows, dropped, groups = _apply_pattern(part, dataset, rows)
        made += groups
        pattern = (part.pattern_key, tuple(groups))
    elif part.source.format in ("lines", "text"):
        made.append("text")
    if part.label is not None:
        column = _label_column(part.source)
        if column in dataset.column_names:
            what = "a group of its pattern" if column in made else "a column of the file"
            raise DataError(f"{part.key}: label {part.label!r} is given for {rows.where}, which already has a {column!r} "
                            f"column ({what}); keep one of them")
        dataset = dataset.add_column(column, [part.label] * len(dataset))
        made.append(column)
    info = {"hub_split" if part.source.format == "hub" else "file": rows.where, "rows": len(dataset)}
    info.update({"label": part.label} if part.label is not None else {})
    info.update({"dropped_unmatched": dropped} if dropped is not None else {})
    return dataset, rows, info, made, pattern


def _apply_pattern(part: Part, dataset: Dataset, rows: FileRows) -> tuple[Dataset, FileRows, int, list]:
    """The pattern's groups as columns: of a lines file, instead of the line; else beside the other columns."""
    key, source = part.pattern_key, part.source
    compiled = compile_pattern(source.pattern, key)
    groups, column, lines = list(compiled.groupindex), source.pattern_column, source.format == "lines"
    if lines:
        if column is not None:
            raise DataError(f"{key}.pattern_column = {column!r}: a lines file has no columns, its pattern applies to the "
                            f"whole line; remove pattern_column")
        column = "text"
    elif column is None:
        raise DataError(f"{key}.pattern needs {key}.pattern_column, the column it applies to "
                        f"({rows.where} has {', '.join(dataset.column_names)})")
    elif column not in dataset.column_names:
        raise DataError(f"{rows.where}: column {column!r} ({key}.pattern_column) not found; columns are: {', '.join(dataset.column_names)}")
    collide = [] if lines else [g for g in groups if g in dataset.column_names and g != column]
    if collide:
        raise DataError(f"{key}.pattern: group(s) {collide} have the name of a column of {rows.where} "
                        f"({', '.join(dataset.column_names)}); rename them (a group named {column!r}, like "
                        f"{key}.pattern_column, replaces that column)")
    values, kept = match_lines(dataset[column], compiled, key, rows, source.on_unmatched)
    dropped = len(dataset) - len(kept)
    if lines:
        dataset = Dataset.from_dict(values, features=Features({g: Value("string") for g in groups}))
    else:
        dataset = dataset.select(kept) if dropped else dataset
        dataset = dataset.remove_columns(column) if column in groups else dataset
        for group in groups:
            dataset = dataset.add_column(group, values[group])
    if dropped:
        log.warning("%s: skipped %d of %d lines that do not match %s.pattern (on_unmatched=drop)",
                    rows.where, dropped, rows.count, key)
    return dataset, (rows.keep(kept) if dropped else rows), dropped, groups


def _join(read: list[tuple], split_source, key: str) -> RawSplit:
    """One split from its parts, in order; they must have the same columns."""
    first, first_rows = read[0][0], read[0][1]
    for dataset, rows, *_ in read[1:]:
        if sorted(dataset.column_names) != sorted(first.column_names):
            raise DataError(
                f"{key}: its files have different columns: {first_rows.where} has {first.column_names}, {rows.where} has "
                f"{dataset.column_names} (give every file a label, or none)"
            )
    joined = first
    if len(read) > 1:
        try:
            joined = datasets.concatenate_datasets([dataset.select_columns(first.column_names) for dataset, *_ in read])
        except (ValueError, TypeError) as err:
            raise DataError(f"{key}: its files' columns have different types ({err})") from None
    made = tuple(dict.fromkeys(column for *_, columns, _ in read for column in columns))
    pattern = next((p for *_, p in read if p is not None), None)
    origin = Origin(", ".join(rows.where for _, rows, *_ in read), [rows for _, rows, *_ in read])
    return RawSplit(joined, origin, split_source, [info for _, _, info, *_ in read], made, pattern)
