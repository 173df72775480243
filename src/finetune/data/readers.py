"""File readers behind `READERS[format]`: one function per local file format, each turning a split's
files into one `datasets.Dataset` (every column a string where the format has no types).

Local GLUE TSVs are read with no quoting (quotes are part of the sentences), with every column
kept as a string (so "NA" stays text and labels stay exactly as written), and with `utf-8-sig`
so MRPC's byte-order mark is dropped. `format: lines` reads one example per line into a `text`
column (and each row's line number, LINE_NUMBER, which finetune.data.sources moves into the row
locations that errors name); `format: text` reads raw text as documents for language modelling.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator
from pathlib import Path

import datasets
from datasets import Dataset, Features, Value

from finetune.errors import DataError

LINE_NUMBER = "__line_number__"  # a `lines` file's line of each row


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


def _read_builder(source, files: list[Path]) -> Dataset:
    """json, jsonl and parquet: datasets' own loaders."""
    for path in files:
        if _is_blank(path):  # datasets fails on an empty file with a bare StopIteration
            raise DataError(f"{path}: no data rows (the file is empty)")
    builder = "json" if source.format in ("json", "jsonl") else source.format
    return datasets.load_dataset(builder, data_files=[str(f) for f in files], split="train")


def read_files(source, files: list[Path]) -> Dataset:
    """The rows of `files` read as `source.format`; undecodable bytes and unparsable files are one DataError."""
    try:
        return READERS[source.format](source, files)
    except UnicodeDecodeError as err:
        raise DataError(_decode_error_message(source, files, err)) from err
    except datasets.exceptions.DatasetGenerationError as err:
        cause = err.__cause__ or err.__context__
        if isinstance(cause, UnicodeDecodeError):
            raise DataError(_decode_error_message(source, files, cause)) from err
        raise DataError(f"could not parse {', '.join(map(str, files))} as {source.format}: {cause or err}") from err


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


def read_text(source, files: list[Path]) -> Dataset:
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


READERS = {
    "tsv": _read_delimited, "csv": _read_delimited, "json": _read_builder, "jsonl": _read_builder, "parquet": _read_builder,
    "squad_json": _read_squad_json, "lines": _read_lines, "text": read_text,
}
FILE_FORMATS = tuple(READERS)
