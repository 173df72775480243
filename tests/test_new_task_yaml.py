"""A new dataset of an existing shape needs only a YAML file, no code.

Made-up datasets, with their own column names and string labels, in csv, tsv and jsonl, plus a
pair task (entailment head) and a multiple-choice task: each gets a task YAML in a directory
outside the project, and `train.py` is run on it through the real command line.

Two ways of adding that directory are exercised, both documented in docs/tasks-and-formats.md:
  python train.py 'hydra.searchpath=[file:///abs/path/to/my_configs]' task=mytask ...
  python train.py --config-dir /path/to/my_configs task=mytask ...
where my_configs/task/mytask.yaml is the new task. To keep the file fast, the csv task runs as a
single run with hydra.searchpath, and the other four as one `-m` sweep with --config-dir, both at
once (one process imports torch & co. once for four jobs).
"""

from __future__ import annotations

import csv
import json
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import ROOT, run_train

TRAIN_ROWS, DEV_ROWS = 40, 20
GOOD = ["great", "wonderful", "brilliant", "lovely", "superb", "charming"]
BAD = ["awful", "terrible", "boring", "dreadful", "poor", "tedious"]
COMMON = ["model=tiny", "trainer.max_steps=5", "trainer.tracker=null", "trainer.progress_bar=false"]
ENV = {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}  # two runs share two cores

TASKS = {
    # Single sentences, labels written as strings and used as they are.
    "mytask_csv": """\
name: mytask_csv
head: classification
local:
  path: reviews_csv
  format: csv
  splits: {train: train.csv, validation: dev.csv}
  columns: {text: review, label: sentiment}
labels: [neg, pos]
metrics: [accuracy]
main_metric: accuracy
max_length: 32
""",
    # Same data as tsv, with other column names and labels mapped through label_map.
    "mytask_tsv": """\
name: mytask_tsv
head: classification
local:
  path: reviews_tsv
  format: tsv
  splits: {train: train.tsv, validation: dev.tsv}
  columns: {text: text_body, label: feeling}
  label_map: {positive: pos, negative: neg}
labels: [neg, pos]
metrics: [accuracy, f1]
main_metric: accuracy
max_length: 32
""",
    # jsonl, the text joined from two fields.
    "mytask_jsonl": """\
name: mytask_jsonl
head: classification
local:
  path: reviews_jsonl
  format: jsonl
  splits: {train: train.jsonl, validation: dev.jsonl}
  columns: {text: [title, body], label: tag}
labels: [neg, pos]
metrics: [accuracy]
main_metric: accuracy
max_length: 32
""",
    # A sentence pair, entailment head.
    "mypair": """\
name: mypair
head: entailment
local:
  path: claims
  format: jsonl
  splits: {train: train.jsonl, validation: dev.jsonl}
  columns: {text: claim, text_pair: evidence, label: verdict}
labels: [agree, disagree]
metrics: [accuracy]
main_metric: accuracy
max_length: 48
""",
    # Multiple choice, one csv column per candidate, the answer a letter mapped to a label.
    "mychoice": """\
name: mychoice
head: multiple_choice
local:
  path: quiz
  format: csv
  splits: {train: train.csv, validation: dev.csv}
  columns: {context: prompt, choices: [opt_a, opt_b, opt_c], label: correct}
  label_map: {a: A, b: B, c: C}
labels: [A, B, C]
metrics: [accuracy]
main_metric: accuracy
max_length: 32
""",
}


def _reviews(n: int, rng: random.Random) -> list[tuple[str, str, str]]:
    """(title, body, label) rows; the label is obvious from the adjective."""
    rows = []
    for i in range(n):
        label = "pos" if i % 2 == 0 else "neg"
        word = rng.choice(GOOD if label == "pos" else BAD)
        rows.append((f"film {i}", f"a {word} movie , truly {word}", label))
    return rows


def _write_csv(path: Path, header: list[str], rows: list[list[str]], delimiter: str = ",") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter=delimiter, quoting=csv.QUOTE_MINIMAL if delimiter == "," else csv.QUOTE_NONE)
        writer.writerow(header)
        writer.writerows(rows)


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def write_data(data_dir: Path) -> None:
    rng = random.Random(0)
    for split, n in (("train", TRAIN_ROWS), ("dev", DEV_ROWS)):
        reviews = _reviews(n, rng)
        _write_csv(data_dir / "reviews_csv" / f"{split}.csv", ["id", "review", "sentiment"],
                   [[str(i), body, label] for i, (_, body, label) in enumerate(reviews)])
        _write_csv(data_dir / "reviews_tsv" / f"{split}.tsv", ["feeling", "text_body"],
                   [["positive" if label == "pos" else "negative", body] for _, body, label in reviews], delimiter="\t")
        _write_jsonl(data_dir / "reviews_jsonl" / f"{split}.jsonl",
                     [{"title": title, "body": body, "tag": label, "stars": 5 if label == "pos" else 1} for title, body, label in reviews])
        claims = []
        for i in range(n):
            word = rng.choice(GOOD)
            agree = i % 2 == 0
            claims.append({"claim": f"the show was {word}", "evidence": f"critics found it {word if agree else rng.choice(BAD)}",
                           "verdict": "agree" if agree else "disagree"})
        _write_jsonl(data_dir / "claims" / f"{split}.jsonl", claims)
        quiz = []
        for i in range(n):
            options = [rng.choice(BAD), rng.choice(BAD), rng.choice(BAD)]
            answer = i % 3
            options[answer] = rng.choice(GOOD)
            quiz.append([f"which word is praise ? ({i})", *options, "abc"[answer]])
        _write_csv(data_dir / "quiz" / f"{split}.csv", ["prompt", "opt_a", "opt_b", "opt_c", "correct"], quiz)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Both command lines at once; returns {task name: run directory} and the two processes."""
    base = tmp_path_factory.mktemp("new_task")
    config_dir, data_dir = base / "my_configs", base / "my_data"
    (config_dir / "task").mkdir(parents=True)
    for name, text in TASKS.items():
        (config_dir / "task" / f"{name}.yaml").write_text(text)
    write_data(data_dir)
    single_dir, sweep_dir = base / "run_csv", base / "sweep"
    single = [f"hydra.searchpath=[file://{config_dir}]", "task=mytask_csv", f"data_dir={data_dir}", *COMMON,
              f"hydra.run.dir={single_dir}"]
    swept = [name for name in TASKS if name != "mytask_csv"]
    sweep = ["-m", "--config-dir", str(config_dir), f"task={','.join(swept)}", f"data_dir={data_dir}", *COMMON,
             f"hydra.sweep.dir={sweep_dir}"]
    # Run from a directory outside the project, as a user with their own dataset would.
    with ThreadPoolExecutor(max_workers=2) as pool:
        single_run = pool.submit(run_train, single, cwd=base, timeout=300, env=ENV)
        sweep_run = pool.submit(run_train, sweep, cwd=base, timeout=300, env=ENV)
        single_result, sweep_result = single_run.result(), sweep_run.result()
    dirs = {"mytask_csv": single_dir, **{name: sweep_dir / str(i) for i, name in enumerate(swept)}}
    return dirs, single_result, sweep_result, base


def _metrics(run_dir: Path, result) -> dict:
    path = run_dir / "metrics.json"
    if not path.is_file():
        failure = run_dir / "failure.json"
        detail = failure.read_text() if failure.is_file() else (result.stdout + result.stderr)[-4000:]
        pytest.fail(f"no metrics.json in {run_dir}:\n{detail}")
    return json.loads(path.read_text())


def test_both_command_lines_succeed(runs):
    _, single, sweep, base = runs
    assert single.returncode == 0, (single.stdout + single.stderr)[-4000:]
    assert sweep.returncode == 0, (sweep.stdout + sweep.stderr)[-4000:]
    assert "all 4 jobs succeeded" in sweep.stdout + sweep.stderr
    assert not (base / "outputs").exists() and not (ROOT / "outputs" / "mytask_csv").exists()


@pytest.mark.parametrize("task", ["mytask_csv", "mytask_tsv", "mytask_jsonl"])
def test_classification_task_from_yaml_only(runs, task):
    dirs, single, sweep, _ = runs
    run_dir = dirs[task]
    metrics = _metrics(run_dir, single if task == "mytask_csv" else sweep)
    assert metrics["task"] == task and metrics["main_metric"] == "accuracy"
    assert metrics["eval"]["num_examples"] == DEV_ROWS
    assert 0.0 <= metrics["eval"]["accuracy"] <= 1.0
    assert metrics["data"]["train"]["rows"] == TRAIN_ROWS and metrics["data"]["validation"]["rows"] == DEV_ROWS
    assert metrics["data"]["train"]["dropped_unknown_label"] == 0
    if task == "mytask_tsv":
        assert "f1" in metrics["eval"]
    manifest = json.loads((run_dir / "model" / "finetune.json").read_text())
    assert manifest["labels"] == ["neg", "pos"] and manifest["head"] == "classification"
    config = (run_dir / "config.yaml").read_text()
    assert f"name: {task}" in config


def test_pair_task_from_yaml_only(runs):
    dirs, _, sweep, _ = runs
    metrics = _metrics(dirs["mypair"], sweep)
    assert metrics["eval"]["num_examples"] == DEV_ROWS and 0.0 <= metrics["eval"]["accuracy"] <= 1.0
    assert metrics["data"]["train"]["rows"] == TRAIN_ROWS
    assert json.loads((dirs["mypair"] / "model" / "finetune.json").read_text())["head"] == "entailment"


def test_multiple_choice_task_from_yaml_only(runs):
    dirs, _, sweep, _ = runs
    metrics = _metrics(dirs["mychoice"], sweep)
    assert metrics["eval"]["num_examples"] == DEV_ROWS and 0.0 <= metrics["eval"]["accuracy"] <= 1.0
    assert metrics["data"]["train"]["rows"] == TRAIN_ROWS
    manifest = json.loads((dirs["mychoice"] / "model" / "finetune.json").read_text())
    assert manifest["head"] == "multiple_choice" and manifest["labels"] == ["A", "B", "C"]
