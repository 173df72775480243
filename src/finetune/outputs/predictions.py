"""Prediction files: `predictions/<split>.tsv` for every task, and the GLUE leaderboard's files.

GLUE's server reads one `<File>.tsv` per task with a header `index<TAB>prediction` and one row per
test example (the dataset's own index): 0/1 for CoLA, SST-2, MRPC, QQP and WNLI, label names for
MNLI, QNLI and RTE, a float for STS-B. Which file and which value a label becomes is the task
YAML's `submission:` section (checked against GLUE's format by tests/test_predict.py).
"""

from __future__ import annotations

import csv
from pathlib import Path

from finetune.errors import ConfigError


def write_predictions(path: Path, rows: list[dict], labels: list[str] | None) -> Path:
    """TSV: id, prediction, [probability], [label], [prob_<label> per label]; fields quoted only if they must be."""
    path.parent.mkdir(parents=True, exist_ok=True)
    classes = labels is not None and bool(rows) and "probabilities" in rows[0]
    columns = ["id", "prediction"] + (["probability"] if classes else []) + (["label"] if rows and "label" in rows[0] else [])
    columns += [f"prob_{name}" for name in labels] if classes else []
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            values = [row["id"], _format(row["prediction"])]
            if classes:
                values.append(f"{row['probability']:.6f}")
            if "label" in columns:
                values.append(_format(row["label"]))
            if classes:
                values.extend(f"{row['probabilities'][name]:.6f}" for name in labels)
            writer.writerow(values)
    return path


def _format(value) -> str:
    return f"{value:.6f}" if isinstance(value, float) else str(value)


def check_submission(task) -> None:
    """The submission section must cover the task's labels exactly (or be a regression file)."""
    submission = task.submission
    if submission is None:
        return
    if not submission.get("files"):
        raise ConfigError(f"task.submission of '{task.name}' has no files: {{split: File.tsv}}")
    mapping = submission.get("labels")
    if task.labels is None:
        if mapping:
            raise ConfigError(f"task.submission.labels of '{task.name}': a regression task writes scores, not labels")
        return
    if mapping is None or set(mapping) != set(task.labels):
        raise ConfigError(
            f"task.submission.labels of '{task.name}' must map every label of {list(task.labels)} "
            f"to its leaderboard value (has {sorted(mapping or {})})"
        )


def write_submission(out_dir: Path, submission, predictions: dict[str, list[dict]]) -> list[Path]:
    """One leaderboard file per predicted split named in `submission.files`."""
    mapping = submission.get("labels")
    written = []
    for split, file_name in submission["files"].items():
        if split not in predictions:
            continue
        path = Path(out_dir) / file_name
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", encoding="utf-8", newline="") as handle:
            handle.write("index\tprediction\n")
            for row in predictions[split]:
                value = str(mapping[row["prediction"]]) if mapping else f"{row['prediction']:.3f}"
                handle.write(f"{row['id']}\t{value}\n")
        written.append(path)
    return written
