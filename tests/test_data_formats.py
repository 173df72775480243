"""Plain-text datasets as YAML only: `format: lines`, `pattern`, labels given per file, carved splits, k folds.

The task YAMLs are the docs' own examples (docs/tasks-and-formats.md, section "Plain-text files, labels
in file names, no dev split, k folds"), read from that page and written into a config directory of the user's, so
every example there is run here. The data are made up by this file. Each case trains the tiny
model for a few steps in this process (`train_in_process`, as `python train.py ...` would) from
that directory, with no change to the code; which rows a carved split or a fold holds is checked
on the rows the same config loads (`load_rows`, the function every run reads its data with).

Fixture sizes, so that the expected counts can be worked out by hand:
* questions/train.label: 30 examples (10 per label DESC, HUM, LOC) on 33 lines (3 blank), in
  Latin-1, one of them with the byte 0x85 (cp1252's "…", U+0085 in Latin-1, a line break for
  str.splitlines); test.label: 9 examples, CRLF line ends.
* polarity/reviews.pos: 24 lines, reviews.neg: 16 lines (40 rows).
  Carved validation, fraction 0.1 of 40 = 4 rows: shares 0.1 * 16 = 1.6 (negative), 0.1 * 24 = 2.4
  (positive) -> floors 1 + 2 = 3, the missing row goes to the larger remainder (negative):
  2 negative + 2 positive; train keeps 14 + 22 = 36.
  5 folds: 8 rows each; per fold 16 / 5 = 3.2 negatives and 24 / 5 = 4.8 positives -> 3 or 4, 4 or 5.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conftest import ROOT, TINY_FAST, compose_config
from test_bad_inputs import assert_one_line_error, train_in_process

SECTION = "#### Plain-text files, labels in file names, no dev split, k folds"
FAST = [*TINY_FAST, "trainer.max_steps=1", "trainer.batch_size=8", "trainer.eval_batch_size=16"]
LABELS = ("DESC", "HUM", "LOC")
QUESTION = {"DESC": "DESC:def what does word {i} mean ?", "HUM": "HUM:ind who wrote book {i} ?",
            "LOC": "LOC:city where is river {i} ?"}


def readme_tasks() -> dict[str, str]:
    """{task name: YAML} of the docs section's `# my_configs/task/<name>.yaml` blocks."""
    readme = (ROOT / "docs" / "tasks-and-formats.md").read_text(encoding="utf-8")
    section = readme.split(SECTION, 1)[1]
    section = re.split(r"\n#{2,4} ", section, maxsplit=1)[0]
    blocks = re.findall(r"```yaml\n(# my_configs/task/(\w+)\.yaml\n.*?)```", section, flags=re.S)
    return {name: text for text, name in blocks}


def question_lines(count: int, offset: int = 0) -> list[str]:
    return [QUESTION[LABELS[i % 3]].format(i=offset + i) for i in range(count)]


def write_questions(root: Path, bad_line: str | None = None) -> Path:
    """questions/train.label (Latin-1, blank lines, one 0x85 byte) and test.label (CRLF)."""
    folder = root / "questions"
    folder.mkdir(parents=True)
    lines = [line.encode("latin-1") for line in question_lines(30)]
    # cp1252 byte 0x85 ("…"): Latin-1 reads it as U+0085, which str.splitlines() takes for a line break.
    lines[7] = b"HUM:ind who wrote Monty Python\x85s book ?"  # file line 9
    out = lines[:3] + [b""] + lines[3:10] + [b"   "] + lines[10:20] + [b""] + lines[20:]
    if bad_line is not None:
        out.insert(11, bad_line.encode("latin-1"))  # file line 12
    (folder / "train.label").write_bytes(b"\n".join(out) + b"\n")
    (folder / "test.label").write_bytes(b"".join(line.encode("latin-1") + b"\r\n" for line in question_lines(9, 100)))
    return folder


def write_polarity(root: Path) -> Path:
    folder = root / "polarity"
    folder.mkdir(parents=True)
    good, bad = ["great", "lovely", "superb", "charming"], ["awful", "dull", "tedious", "poor"]
    (folder / "reviews.pos").write_text("".join(f"a {good[i % 4]} film , number {i}\n" for i in range(24)), encoding="utf-8")
    (folder / "reviews.neg").write_text("".join(f"a {bad[i % 4]} film , number {100 + i}\n" for i in range(16)), encoding="utf-8")
    return folder


# Not a docs example: labelled file entries in another format, each with its own reading options.
REVIEWS_TSV = """\
name: reviews_tsv
head: classification
local:
  path: reviews_tsv
  format: tsv
  splits:
    train:
      files:
        - {file: good.tsv, label: positive}
        - {file: bad.tsv, label: negative, encoding: latin-1, header: false, column_names: [id, review]}
      columns: {id: id}         # merged into the columns below, for this split
  columns: {text: review}
labels: [negative, positive]
max_length: 32
"""


def write_reviews_tsv(root: Path) -> None:
    folder = root / "reviews_tsv"
    folder.mkdir(parents=True)
    (folder / "good.tsv").write_text("id\treview\ng1\ta great film\ng2\ta lovely caf\u00e9 scene\ng3\tsuperb\n", encoding="utf-8")
    (folder / "bad.tsv").write_bytes(b"b1\ta dull caf\xe9 scene\nb2\tpoor\nb3\t\n")  # Latin-1; an empty text on line 3


@pytest.fixture(scope="module")
def user(tmp_path_factory):
    """A user's own config directory (the docs' task YAMLs) and data directory."""
    base = tmp_path_factory.mktemp("formats")
    config_dir, data_dir = base / "my_configs", base / "my_data"
    (config_dir / "task").mkdir(parents=True)
    for name, text in readme_tasks().items():
        (config_dir / "task" / f"{name}.yaml").write_text(text)
    (config_dir / "task" / "reviews_tsv.yaml").write_text(REVIEWS_TSV)
    write_questions(data_dir)
    write_polarity(data_dir)
    write_reviews_tsv(data_dir)
    return config_dir, data_dir


def run(user, tmp_path: Path, *args: str, name: str = "run"):
    config_dir, data_dir = user
    flags = [arg for arg in args if arg.startswith("-")]  # -m must come before the overrides
    overrides = [arg for arg in args if not arg.startswith("-")]
    return train_in_process([*flags, "--config-dir", str(config_dir), f"data_dir={data_dir}", *FAST, *overrides], tmp_path / name)


def metrics_of(result) -> dict:
    assert result.code in (0, None), (result.stdout + result.stderr)[-3000:]
    return json.loads((result.run_dir / "metrics.json").read_text())


def rows(user, *overrides: str, splits=("train", "validation"), columns=("text", "label")) -> dict:
    """The standardised rows of `splits` as a run with these overrides loads them: {split: [(text, label)]}."""
    from finetune.data.pipeline import load_rows
    from finetune.models.heads import HEADS

    config_dir, data_dir = user
    cfg = compose_config([f"hydra.searchpath=[file://{config_dir}]", f"data_dir={data_dir}", "model=tiny", *overrides])
    loaded, _ = load_rows(cfg, HEADS[cfg.task.head], True, list(splits), "train")
    return {split: list(zip(*(loaded[split][column] for column in columns))) for split in splits}


def test_readme_has_one_example_per_case():
    assert set(readme_tasks()) == {"questions", "polarity", "polarity_cv"}


# --------------------------------------------------------------------- lines + regex + Latin-1
def test_lines_file_with_a_regex_label_and_a_latin1_byte(user, tmp_path):
    data_dir = user[1]
    raw = (data_dir / "questions" / "train.label").read_bytes().decode("latin-1")
    assert len([line for line in raw.splitlines() if line.strip()]) == 31  # the trap: splitlines cuts line 9 in two

    metrics = metrics_of(run(user, tmp_path, "task=questions"))
    train, validation = metrics["data"]["train"], metrics["data"]["validation"]
    assert train["rows"] == 30 and validation["rows"] == 9 and metrics["eval"]["num_examples"] == 9
    assert train["files"] == [{"file": str(data_dir / "questions" / "train.label"), "rows": 30, "dropped_unmatched": 0}]
    assert train["dropped_unmatched"] == 0 and 0.0 <= metrics["eval"]["accuracy"] <= 1.0

    loaded = rows(user, "task=questions")
    assert ("who wrote Monty Python\x85s book ?", LABELS.index("HUM")) in loaded["train"]
    assert [label for _, label in loaded["train"]].count(LABELS.index("LOC")) == 10
    assert loaded["validation"][0] == ("what does word 100 mean ?", 0)  # CRLF: no "\r" left in the text
    assert not any(text.endswith("\r") for text, _ in loaded["validation"])


# ---------------------------------------------------------------------------- unmatched lines
@pytest.fixture(scope="module")
def bad_data(tmp_path_factory) -> Path:
    data_dir = tmp_path_factory.mktemp("bad_data")
    write_questions(data_dir, bad_line="what is this line doing here ?")
    return data_dir


def test_a_line_the_pattern_does_not_match_is_an_error_naming_it(user, bad_data, tmp_path):
    result = train_in_process(["--config-dir", str(user[0]), f"data_dir={bad_data}", *FAST, "task=questions"], tmp_path / "run")
    assert_one_line_error(result, f"{bad_data / 'questions' / 'train.label'} line 12: 'what is this line doing here ?' "
                                  "does not match task.local.pattern", "task.local.on_unmatched=drop")


def test_on_unmatched_drop_skips_and_counts_it(user, bad_data, tmp_path):
    result = train_in_process(["--config-dir", str(user[0]), f"data_dir={bad_data}", *FAST, "task=questions",
                               "task.local.on_unmatched=drop"], tmp_path / "run")
    train = metrics_of(result)["data"]["train"]
    assert train["rows"] == 30 and train["dropped_unmatched"] == 1
    assert train["files"][0]["rows"] == 30 and train["files"][0]["dropped_unmatched"] == 1


# ------------------------------------------------------------ files with a label each, carved split
def test_two_files_with_a_label_each_and_a_carved_validation_split(user, tmp_path):
    data_dir = user[1]
    metrics = metrics_of(run(user, tmp_path, "task=polarity"))
    train, validation = metrics["data"]["train"], metrics["data"]["validation"]
    assert train["files"] == [{"file": str(data_dir / "polarity" / "reviews.pos"), "label": "positive", "rows": 24},
                              {"file": str(data_dir / "polarity" / "reviews.neg"), "label": "negative", "rows": 16}]
    assert (train["rows"], validation["rows"], metrics["eval"]["num_examples"]) == (36, 4, 4)
    assert train["carved_out"] == ["validation"]
    assert {k: validation[k] for k in ("carved_from", "fraction", "split_seed", "stratified_by_label")} == {
        "carved_from": "train", "fraction": 0.1, "split_seed": 0, "stratified_by_label": True}


def test_carved_rows_are_stratified_disjoint_and_fixed_by_split_seed_only(user):
    seed_1 = rows(user, "task=polarity", "seed=1")
    negative, positive = 0, 1
    assert sorted(label for _, label in seed_1["validation"]) == [negative, negative, positive, positive]
    assert sorted(label for _, label in seed_1["train"]) == [negative] * 14 + [positive] * 22
    every = {text for split in seed_1.values() for text, _ in split}
    assert len(every) == 40 and not {t for t, _ in seed_1["train"]} & {t for t, _ in seed_1["validation"]}
    assert rows(user, "task=polarity", "seed=2") == seed_1  # another training seed: the same rows
    other = rows(user, "task=polarity", "task.local.split_seed=1")
    assert set(other["validation"]) != set(seed_1["validation"])
    assert sorted(label for _, label in other["validation"]) == [negative, negative, positive, positive]


def test_labelled_file_entries_in_another_format_with_their_own_options(user):
    """{file, label} entries work for tsv too, each file with its own encoding and header; errors name
    the file's own line."""
    from finetune.errors import DataError

    with pytest.raises(DataError, match=re.escape(f"{user[1] / 'reviews_tsv' / 'bad.tsv'} line 3: empty 'text'")):
        rows(user, "task=reviews_tsv", splits=("train",))
    loaded = rows(user, "task=reviews_tsv", "task.on_empty_text=drop", splits=("train",), columns=("text", "label", "id"))["train"]
    assert loaded == [("a great film", 1, "g1"), ("a lovely caf\u00e9 scene", 1, "g2"), ("superb", 1, "g3"),
                      ("a dull caf\u00e9 scene", 0, "b1"), ("poor", 0, "b2")]


# --------------------------------------------------------------------------------------- folds
def test_five_folds_hold_out_every_row_exactly_once(user):
    texts = None
    held_out = []
    for fold in range(5):
        loaded = rows(user, "task=polarity_cv", f"task.local.fold={fold}")
        validation = [text for text, _ in loaded["validation"]]
        train = [text for text, _ in loaded["train"]]
        assert len(validation) == 8 and len(train) == 32 and not set(validation) & set(train)
        labels = [label for _, label in loaded["validation"]]
        assert labels.count(0) in (3, 4) and labels.count(1) in (4, 5)
        texts = texts or set(validation) | set(train)
        assert set(validation) | set(train) == texts
        held_out += validation
    assert len(held_out) == 40 and set(held_out) == texts  # each row in exactly one validation fold
    # Fold 0 of 5 is the same draw as a split carved with fraction 1/5 and the same split_seed.
    carved = rows(user, "task=polarity", "task.local.splits.validation.fraction=0.2")
    fold_0 = rows(user, "task=polarity_cv", "task.local.fold=0")
    assert set(carved["validation"]) == set(fold_0["validation"])


def test_fold_sweep_reports_mean_and_std_over_the_folds(user, tmp_path):
    from finetune import report

    sweep_dir = tmp_path / "sweep"
    result = run(user, tmp_path, "-m", "task=polarity_cv", "task.local.fold=range(5)", f"hydra.sweep.dir={sweep_dir}")
    assert result.code in (0, None), (result.stdout + result.stderr)[-3000:]
    for fold in range(5):
        data = json.loads((sweep_dir / str(fold) / "metrics.json").read_text())["data"]
        assert (data["validation"]["fold"], data["validation"]["folds"], data["validation"]["fold_of"]) == (fold, 5, "train")
        assert (data["validation"]["rows"], data["train"]["rows"], data["train"]["held_out_fold"]) == (8, 32, fold)
    [row] = report.summarise(report.collect(sweep_dir))
    assert (row["task"], row["setting"], row["n"], row["folds"]) == ("polarity_cv", "(defaults)", 5, ["0", "1", "2", "3", "4"])
    accuracy = row["metrics"]["accuracy"]
    assert len(accuracy["values"]) == 5 and accuracy["std"] == accuracy["std"]  # a number: 5 replicates
    markdown = (sweep_dir / "report.md").read_text()  # written at the end of the sweep
    assert "over seeds and folds" in markdown
    assert re.search(r"\| polarity_cv \| \(defaults\) \| \d\.\d{4} ± \d\.\d{4} \| 5 \| accuracy=\d\.\d{4} \(fold \d\) \|", markdown), markdown


# ------------------------------------------------------------------------------ Hub datasets
def test_hub_dataset_with_only_a_train_split(tmp_path):
    """A Hub-style dataset (here a local dataset directory, which load_dataset reads like a Hub id) with
    only a train split: a column cut by a pattern, validation carved from train."""
    hub_dir = tmp_path / "hub_questions"
    hub_dir.mkdir()
    lines = question_lines(30)
    (hub_dir / "train.jsonl").write_text("".join(json.dumps({"qid": i, "raw": line}) + "\n" for i, line in enumerate(lines)))
    task_dir = tmp_path / "configs" / "task"
    task_dir.mkdir(parents=True)
    (task_dir / "hubq.yaml").write_text(f"""\
name: hubq
head: classification
hub:
  path: {hub_dir}
  pattern: '(?P<label>[A-Z]+):\\S+ (?P<text>.+)'
  pattern_column: raw
  splits: {{validation: {{from: train, fraction: 0.2}}}}
  columns: {{id: qid}}
labels: [DESC, HUM, LOC]
max_length: 32
""")
    result = train_in_process(["--config-dir", str(tmp_path / "configs"), "task=hubq", *FAST], tmp_path / "run")
    data = metrics_of(result)["data"]
    assert (data["train"]["rows"], data["validation"]["rows"]) == (24, 6)
    assert data["validation"]["carved_from"] == "train" and data["validation"]["stratified_by_label"] is True
    assert data["train"]["files"] == [{"hub_split": f"{hub_dir}/[train]", "dropped_unmatched": 0, "rows": 30}]
    # Folds on the Hub source too (no validation entry then): 3 folds of 30 rows, 10 each, every label 3 or 4 times.
    from finetune.data.pipeline import load_rows
    from finetune.models.heads import HEADS

    held_out = []
    for fold in range(3):
        cfg = compose_config([f"hydra.searchpath=[file://{tmp_path / 'configs'}]", "task=hubq", "~task.hub.splits.validation",
                              "task.hub.folds=3", f"task.hub.fold={fold}"])
        loaded, stats = load_rows(cfg, HEADS["classification"], True, ["train", "validation"], "train")
        assert (len(loaded["train"]), len(loaded["validation"]), stats["validation"]["fold"]) == (20, 10, fold)
        assert all(list(loaded["validation"]["label"]).count(label) in (3, 4) for label in range(3))
        held_out += list(loaded["validation"]["id"])
    assert sorted(held_out) == list(range(30))


# ------------------------------------------------------------------------ one-line errors
@pytest.mark.parametrize("args, expected", [
    (["task=polarity_cv", "task.local.fold=5"], ["config key 'task.local.fold' = 5: expected a fold in 0..4"]),
    (["task=questions", "task.local.pattern='(?P<label>[A-Z]+:(?P<text>.+)'"],
     ["task.local.pattern = '(?P<label>[A-Z]+:(?P<text>.+)': not a valid regular expression (missing ), unterminated subpattern"]),
    (["task=polarity", "task.local.splits.train=[{file:reviews.pos,label:positve},{file:reviews.neg,label:negative}]"],
     ["task.local.splits.train[0].label = 'positve' is not in task.labels ['negative', 'positive']"]),
])
def test_bad_configs_end_the_run_with_one_line(user, tmp_path, args, expected):
    assert_one_line_error(run(user, tmp_path, *args), *expected)


@pytest.mark.parametrize("overrides, expected", [
    (["task=questions", "task.local.pattern='([A-Z]+):\\S+ (.+)'"], ["task.local.pattern", "has no named groups"]),
    (["task=questions", "task.local.pattern='(?P<tag>[A-Z]+):\\S+ (?P<text>.+)'"],
     ["task.local.pattern: its groups (tag, text) give no 'label' column, which the classification head needs",
      "task.local.columns.label"]),
    (["task=polarity", "task.local.pattern='(?P<label>\\w+) (?P<text>.+)'"],
     ["task.local.splits.train[0]: label 'positive' is given for", "reviews.pos, which already has a 'label' column (a group of its pattern)"]),
    (["task=polarity", "task.local.splits.train=[reviews.pos,reviews.neg]"],
     ["a lines file gives only a 'text' column and the classification head needs label", "{file: ..., label: ...}"]),
    (["task=questions", "task.local.folds=5", "task.local.fold=0"],
     ["task.local.folds=5 makes 'validation' fold 0 of 'train', but task.local.splits.validation is given too"]),
    (["task=questions", "task.local.pattern_column=text"], ["task.local.pattern_column = 'text': a lines file has no columns"]),
    (["task=polarity_cv", "task.local.folds=50", "task.local.fold=0"], ["40 rows cannot make 50 folds"]),
])
def test_bad_data_configs_are_one_line_errors(user, overrides, expected):
    """The same errors as above, raised where the data are read (the CLI prints every one as above)."""
    from finetune.errors import FinetuneError

    with pytest.raises(FinetuneError) as raised:
        rows(user, *overrides)
    message = str(raised.value)
    assert "\n" not in message
    for part in expected:
        assert part in message, f"{part!r} not in {message!r}"


@pytest.mark.parametrize("overrides, expected", [
    (["task.local.folds=1"], "config key 'task.local.folds' = 1: expected an integer >= 2 or null"),
    (["task.local.fold=null"], "config key 'task.local.fold' = None: expected a fold in 0..4"),
    (["task.local.folds=null"], "config key 'task.local.fold' = 0: expected null unless task.local.folds is set"),
    (["task.local.on_unmatched=skip"], "config key 'task.local.on_unmatched' = 'skip': expected error or drop"),
])
def test_fold_and_on_unmatched_values_are_checked_with_the_config(user, overrides, expected):
    from finetune.config import validate
    from finetune.errors import ConfigError

    cfg = compose_config([f"hydra.searchpath=[file://{user[0]}]", "task=polarity_cv", *overrides])
    with pytest.raises(ConfigError, match=re.escape(expected)):
        validate(cfg)
