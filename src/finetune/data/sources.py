"""Load a task's raw splits from the Hub or from local files under `data_dir`.

Local GLUE TSVs are read with no quoting (quotes are part of the sentences), with every column
kept as a string (so "NA" stays text and labels stay exactly as written), and with `utf-8-sig`
so MRPC's byte-order mark is dropped.

A split is a file (a Hub split), a list of them, or a mapping with its own options; an item of a
list may itself be a mapping, `{file: a.pos, label: positive}`: one label for all of its rows.
Every file is read on its own (errors name its own lines; metrics.json says how many rows each
gave), then a split's files are joined. `format: lines` reads one example per line into a `text`
column; `pattern` cuts columns out of each line (finetune.data.patterns). `format: text` reads raw
text as documents (`document`: a line, a blank-line separated paragraph or a whole file) for
language modelling.
"""

from __future__ import annotations

import csv
import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
from datasets import Dataset, Features, Value
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from finetune.data.columns import FileRows, Origin
from finetune.data.patterns import compile_pattern, match_lines
from finetune.errors import DataError, HubUnavailableError

log = logging.getLogger(__name__)

FILE_FORMATS = ("tsv", "csv", "json", "jsonl", "parquet", "squad_json", "lines", "text")
# What one row is (`document`): raw text files (format: text) split into lines, blank-line separated
# paragraphs or whole files; every other format has rows already, each a document in its text column.
TEXT_DOCUMENTS = ("line", "paragraph", "file")
TABLE_DOCUMENTS = ("column",)

# Options for reading a split's own files (e.g. a GLUE test file with a header and an id column
# where train and dev have neither): allowed on a split entry and on each item of a list of files.
READ_OPTIONS = ("header", "column_names", "encoding", "pattern", "pattern_column", "on_unmatched")
# Options of a whole split: `columns` is merged into the source's roles.
SPLIT_OPTIONS = READ_OPTIONS + ("columns", "label_map")
LINE_NUMBER = "__line_number__"  # a `lines` file's line of each row; _read_local_part moves it into FileRows


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
    dataset = _read_files(part.source, [path])
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


def read_lines(path: Path, encoding: str) -> Iterator[tuple[int, str]]:
    """(line number, line without its line break) for every non-blank line of a text file.

    Lines end at "\n" (or "\r\n") only, never at the other characters that str.splitlines()
    breaks on (U+0085, which cp1252's byte 0x85 becomes in a file read as Latin-1; U+2028; form
    feeds): those would silently cut one example into two.
    """
    with open(path, encoding=encoding, newline="\n") as handle:
        for number, line in enumerate(handle, start=1):
            line = line[:-1] if line.endswith("\n") else line
            line = line[:-1] if line.endswith("\r") else line
            if line.strip():
                yield number, line


def _read_lines(source, files: list[Path]) -> Dataset:
    """`format: lines`: one example per non-blank line, in column `text` (and each one's line number)."""
    texts, numbers = [], []
    for path in files:
        before = len(texts)
        for number, line in read_lines(path, source.encoding):
            texts.append(line)
            numbers.append(number)
        if len(texts) == before:
            raise DataError(f"{path}: no data rows (the file is empty or has only blank lines)")
    return Dataset.from_dict({"text": texts, LINE_NUMBER: numbers},
                             features=Features({"text": Value("string"), LINE_NUMBER: Value("int64")}))


def _read_files(source, files: list[Path]) -> Dataset:
    fmt = source.format
    try:
        if fmt == "lines":
            return _read_lines(source, files)
        if fmt in ("tsv", "csv"):
            return _read_delimited(source, files)
        if fmt == "squad_json":
            return _read_squad_json(source, files)
        if fmt == "text":
            return _read_text(source, files)
        builder = "json" if fmt in ("json", "jsonl") else fmt
        for path in files:
            if _is_blank(path):  # datasets fails on an empty file with a bare StopIteration
                raise DataError(f"{path}: no data rows (the file is empty)")
        return datasets.load_dataset(builder, data_files=[str(f) for f in files], split="train")
    except UnicodeDecodeError as err:
        raise DataError(_decode_error_message(source, files, err)) from err
    except datasets.exceptions.DatasetGenerationError as err:
        cause = err.__cause__ or err.__context__
        if isinstance(cause, UnicodeDecodeError):
            raise DataError(_decode_error_message(source, files, cause)) from err
        raise DataError(f"could not parse {', '.join(map(str, files))} as {fmt}: {cause or err}") from err


def _is_blank(path: Path, probe: int = 1 << 16) -> bool:
    """Empty, or only whitespace in its first `probe` bytes (a larger blank file is not worth a read)."""
    with open(path, "rb") as handle:
        head = handle.read(probe)
    return not head.strip() and len(head) < probe


def _decode_error_message(source, files, err: UnicodeDecodeError) -> str:
    """Find the first line that does not decode, so the message can name it."""
    for path in files:
        with open(path, "rb") as handle:
            for number, raw in enumerate(handle, start=1):
                try:
                    raw.decode(source.encoding)
                except UnicodeDecodeError:
                    return (
                        f"{path} line {number}: bytes that are not valid {source.encoding} "
                        f"(set task.local.encoding, e.g. task.local.encoding=latin-1)"
                    )
    return f"{', '.join(map(str, files))}: not valid {source.encoding} ({err})"


def _check_records(source, files: list[Path], delimiter: str, quoting: int, names: list[str]) -> None:
    """Every record must have one field per column, and every file a data row.

    All columns are read as strings, so the parser would fill a short row's missing fields with ""
    (a missing label would then look like an unknown label ''): count the fields ourselves and
    name the line instead.
    """
    separator = "tab" if delimiter == "\t" else "comma"
    header = source.header  # read once: a config node costs microseconds per access, and this loop runs per record
    for path in files:
        rows = 0
        with open(path, encoding=source.encoding, newline="") as handle:
            reader = csv.reader(handle, delimiter=delimiter, quoting=quoting)
            for record in reader:
                if not record:  # blank line: the parser skips it too
                    continue
                if header and reader.line_num == 1:
                    if len(record) != len(names):
                        raise DataError(f"{path} line 1: header has columns {record}, the split's first file has {names}")
                    continue
                rows += 1
                if len(record) != len(names):
                    hint = (f"a {separator} separator or a field is missing" if len(record) < len(names)
                            else f"the text contains an extra {separator}" + (" (quote such fields)" if separator == "comma" else ""))
                    raise DataError(
                        f"{path} line {reader.line_num}: {len(record)} field(s), expected {len(names)} "
                        f"({', '.join(names)}); {hint}: fix or remove the line"
                    )
        if rows == 0:
            raise DataError(f"{path}: no data rows" + (" (only a header line)" if source.header and path.stat().st_size else " (the file is empty)"))


def _read_delimited(source, files: list[Path]) -> Dataset:
    delimiter = "\t" if source.format == "tsv" else ","
    # GLUE TSVs contain bare quote characters inside sentences; CSV files use standard quoting.
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    if source.header:
        with open(files[0], encoding=source.encoding) as handle:
            first = handle.readline().rstrip("\r\n")
        if not first:
            raise DataError(f"{files[0]}: the file is empty or its first line is blank (expected a header line; "
                            f"for a header-less file set task.local.header=false and task.local.column_names)")
        names = next(csv.reader([first], delimiter=delimiter, quoting=quoting))
        header = 0
    else:
        if not source.column_names:
            raise DataError(f"{files[0]}: header-less file needs task.local.column_names")
        names, header = list(source.column_names), None
    if len(set(names)) != len(names):
        raise DataError(f"{files[0]}: duplicate column names in header: {names}")
    _check_records(source, files, delimiter, quoting, names)
    return datasets.load_dataset(
        "csv",
        data_files=[str(f) for f in files],
        split="train",
        delimiter=delimiter,
        header=header,
        column_names=None if source.header else names,
        features=Features({name: Value("string") for name in names}),
        quoting=quoting,
        keep_default_na=False,
        na_filter=False,
        encoding=source.encoding,
    )


def _read_squad_json(source, files: list[Path]) -> Dataset:
    """Flatten official SQuAD v1.1 JSON (articles > paragraphs > questions) to the Hub's columns."""
    rows = {"id": [], "title": [], "context": [], "question": [], "answers": []}
    for path in files:
        with open(path, encoding=source.encoding) as handle:
            try:
                articles = json.load(handle)["data"]
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise DataError(f"{path}: not SQuAD JSON with a top-level 'data' list ({err})") from err
        where = "data"
        try:
            for i, article in enumerate(articles):
                for j, paragraph in enumerate(article["paragraphs"]):
                    where = f"data[{i}].paragraphs[{j}]"
                    context = paragraph["context"]
                    for k, qa in enumerate(paragraph["qas"]):
                        where = f"data[{i}].paragraphs[{j}].qas[{k}]"
                        answers = qa["answers"]
                        row = {
                            "id": qa["id"], "title": article.get("title", ""), "context": context, "question": qa["question"],
                            "answers": {"text": [a["text"] for a in answers], "answer_start": [a["answer_start"] for a in answers]},
                        }
                        for key, value in row.items():
                            rows[key].append(value)
        except (KeyError, TypeError, AttributeError) as err:
            what = f"has no {err}" if isinstance(err, KeyError) else f"is malformed ({err})"
            raise DataError(
                f"{path}: {where} {what}; expected SQuAD v1.1 JSON (data > paragraphs {{context, qas}} > "
                f"qas {{id, question, answers [{{text, answer_start}}]}})"
            ) from None
    return Dataset.from_dict(rows)


def _split_documents(batch, document: str) -> dict:
    """One file's text (a row) -> its documents: lines, blank-line separated paragraphs, or the file.

    Trailing whitespace is dropped and blank documents are skipped; leading spaces stay (WikiText's
    lines start with one, and GPT-2's tokens carry the space before a word).
    """
    documents = []
    for text in batch["text"]:
        if document == "line":
            pieces = text.split("\n")
        elif document == "paragraph":
            pieces = re.split(r"\n[ \t\f\v]*\n", text)
        else:
            pieces = [text]
        documents.extend(piece.strip("\n").rstrip() for piece in pieces if piece.strip())
    return {"text": documents}


def _read_text(source, files: list[Path]) -> Dataset:
    """`format: text`: raw text as one row per document (`document`: line (default), paragraph or file).

    Files are read by datasets' text loader (one row per file) and split by a `map`, so both are
    cached like every other source. A file with no text at all is an error naming it.
    """
    for path in files:
        if _is_blank(path):
            raise DataError(f"{path}: the file is empty or only whitespace; a text task needs text")
    whole = datasets.load_dataset("text", data_files=[str(f) for f in files], split="train",
                                  sample_by="document", encoding=source.encoding)
    for path, text in zip(files, whole["text"]):
        if not text.strip():
            raise DataError(f"{path}: the file is empty or only whitespace; a text task needs text")
    document = source.document or "line"
    return whole.map(_split_documents, batched=True, batch_size=1, fn_kwargs={"document": document},
                     remove_columns=whole.column_names, desc=f"Splitting text into {document}s")
