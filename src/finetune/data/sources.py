"""Load a task's raw splits from the Hub or from local files under `data_dir`.

Local GLUE TSVs are read with no quoting (quotes are part of the sentences), with every column
kept as a string (so "NA" stays text and labels stay exactly as written), and with `utf-8-sig`
so MRPC's byte-order mark is dropped.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import datasets
from datasets import Dataset, DatasetDict, Features, Value
from omegaconf import DictConfig, OmegaConf, open_dict

from finetune.errors import DataError, HubUnavailableError

log = logging.getLogger(__name__)

FILE_FORMATS = ("tsv", "csv", "json", "jsonl", "parquet", "squad_json")


# Options a split entry may set for its own files (e.g. a GLUE test file with a header and an id
# column where train and dev have neither); `columns` is merged into the source's roles.
SPLIT_OPTIONS = ("header", "column_names", "columns", "encoding", "label_map")


def task_source(task, data_dir: str | None) -> tuple:
    """(the source config that applies, its config key): local files with data_dir, else the Hub."""
    if data_dir:
        if task.local is None:
            raise DataError(f"task '{task.name}' has no local source (task.local); unset data_dir to use the Hub")
        return task.local, "task.local"
    if task.hub is None:
        raise DataError(f"task '{task.name}' has no Hub source; set data_dir=<DIR> to read it from local files")
    return task.hub, "task.hub"


def load_splits(task, splits: list[str], data_dir: str | None, offline: bool) -> tuple[DatasetDict, dict, dict]:
    """Return the raw splits, per split a description of where it came from (for errors), and per
    split the source config that applies to it (the task's source with the split's own options)."""
    source, _ = task_source(task, data_dir)
    if data_dir:
        return _load_local(task, source, Path(data_dir).expanduser(), splits)
    return _load_hub(task, source, splits, offline)


def split_entry(source, split: str, key: str, default=None):
    """(what the split names: a Hub split, a file or a list of files; the source as it applies to the split).

    An entry is a string, a list of files, or a mapping with `file`/`files` (local), `split` (Hub)
    and any of SPLIT_OPTIONS.
    """
    entry = source.splits.get(split, default)
    if not isinstance(entry, DictConfig):
        return entry, source
    target = entry.get("split") if key == "task.hub" else entry.get("files", entry.get("file"))
    unknown = set(entry) - set(SPLIT_OPTIONS) - {"file", "files", "split"}
    if unknown or target is None:
        raise DataError(
            f"{key}.splits.{split}: " + (f"unknown key(s) {sorted(unknown)}" if unknown else
                                          f"no {'split' if key == 'task.hub' else 'file'} given")
            + f"; a split entry takes {'split' if key == 'task.hub' else 'file (or files)'} and {', '.join(SPLIT_OPTIONS)}"
        )
    # OmegaConf.merge merges mappings key by key (columns, label_map) and replaces lists (column_names);
    # the split may add roles the task-wide columns do not name (e.g. a test file's `id`).
    merged = OmegaConf.merge(source, {})
    with open_dict(merged):
        merged.merge_with({k: entry[k] for k in SPLIT_OPTIONS if k in entry})
    return target, merged


def _load_hub(task, source, splits, offline):
    loaded, origins, sources = {}, {}, {}
    for split in splits:
        hub_split, sources[split] = split_entry(source, split, "task.hub", default=split)
        try:
            loaded[split] = datasets.load_dataset(source.path, source.name, split=hub_split)
        except (ConnectionError, OSError) as err:
            if offline:
                raise HubUnavailableError(
                    f"task '{task.name}' needs dataset '{source.path}' ({source.name}) from the Hub, which is "
                    f"not reachable (offline); point data_dir=<DIR> at local files laid out like ../shared/data"
                ) from err
            raise DataError(f"could not load '{source.path}' ({source.name}) split '{hub_split}': {err}") from err
        except ValueError as err:
            raise DataError(f"dataset '{source.path}' ({source.name}) has no split '{hub_split}': {err}") from err
        origins[split] = f"{source.path}/{source.name or ''}[{hub_split}]"
    return DatasetDict(loaded), origins, sources


def _load_local(task, source, data_dir: Path, splits):
    if not data_dir.is_dir():
        raise DataError(f"data_dir '{data_dir}' does not exist or is not a directory")
    if source.format not in FILE_FORMATS:
        raise DataError(f"task '{task.name}': task.local.format '{source.format}' is not one of {', '.join(FILE_FORMATS)}")
    base = data_dir / source.path
    loaded, origins, sources = {}, {}, {}
    for split in splits:
        if split not in source.splits:
            raise DataError(
                f"task '{task.name}': no local '{split}' split is configured (task.local.splits has "
                f"{', '.join(source.splits) or 'none'})"
            )
        names, sources[split] = split_entry(source, split, "task.local")
        files = [base / name for name in ([names] if isinstance(names, str) else names)]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise DataError(
                f"task '{task.name}': local '{split}' split not found: {', '.join(missing)} "
                f"(point task.local.splits.{split}=<file> at one, or leave data_dir unset to use the Hub)"
            )
        loaded[split] = _read_files(sources[split], files)
        origins[split] = ", ".join(str(f) for f in files)
    return DatasetDict(loaded), origins, sources


def _read_files(source, files: list[Path]) -> Dataset:
    fmt = source.format
    try:
        if fmt in ("tsv", "csv"):
            return _read_delimited(source, files)
        if fmt == "squad_json":
            return _read_squad_json(source, files)
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
    for path in files:
        rows = 0
        with open(path, encoding=source.encoding, newline="") as handle:
            reader = csv.reader(handle, delimiter=delimiter, quoting=quoting)
            for record in reader:
                if not record:  # blank line: the parser skips it too
                    continue
                if source.header and reader.line_num == 1:
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
