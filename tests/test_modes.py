"""Modes of the one command: evaluate and predict what training made, GLUE files, early stopping,
what a run records about itself (environment, curves, model card).

Runs `train.py` in this process (see test_bad_inputs.train_in_process) on the tiny model.
"""

from __future__ import annotations

import json
import struct

import pytest
import yaml
from omegaconf import OmegaConf

from conftest import CONFIG_DIR, TINY_FAST
from finetune.modes import MODES
from finetune.training import allocator
from test_bad_inputs import SST2_DEV, SST2_HEADER, SST2_TRAIN, assert_one_line_error, lines, sst2_dir, train_in_process, write

QUICK = ["experiment=quickstart", *TINY_FAST, "trainer.max_train_samples=96", "trainer.max_eval_samples=40",
         "trainer.batch_size=16", "trainer.max_steps=12", "trainer.eval_every=4", "trainer.log_every=2", "seed=5"]


def ok(args: list[str], run_dir):
    result = train_in_process(args, run_dir)
    assert result.code in (0, None), result.stderr[-3000:]
    return json.loads((run_dir / "metrics.json").read_text())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("trained")
    return run_dir, ok(QUICK, run_dir)


def test_every_mode_has_a_config_and_every_config_a_mode():
    assert set(MODES) >= {"train", "evaluate", "predict"}
    assert set(MODES) == {p.stem for p in (CONFIG_DIR / "mode").glob("*.yaml")}
    for path in (CONFIG_DIR / "mode").glob("*.yaml"):
        assert OmegaConf.load(path).name == path.stem


def test_unknown_mode_is_a_one_line_error(tmp_path):
    result = train_in_process([*QUICK, "mode=fit"], tmp_path / "run")
    assert_one_line_error(result, "unknown mode 'fit' (mode=fit); choose one of:", "evaluate", "predict", "train")


@pytest.mark.parametrize("what", ["model", "checkpoint"])
def test_evaluate_reproduces_the_training_runs_dev_metrics(trained, tmp_path, what):
    run_dir, metrics = trained
    source = run_dir / "model" if what == "model" else run_dir / "checkpoints" / f"step-{metrics['best_step']}"
    evaluated = ok([*QUICK, "mode=evaluate", f"model.name_or_path={source}"], tmp_path / "eval")
    assert evaluated["eval"] == metrics["eval"]  # exactly, every metric and num_examples
    assert evaluated["eval_splits"] == metrics["eval_splits"]
    assert evaluated["model"]["kind"] == ("exported" if what == "model" else "checkpoint")
    assert (tmp_path / "eval" / "config.yaml").is_file() and (tmp_path / "eval" / "train.log").is_file()
    assert not (tmp_path / "eval" / "checkpoints").exists()


def test_evaluate_refuses_an_untrained_head_unless_asked(tmp_path):
    result = train_in_process([*QUICK, "mode=evaluate"], tmp_path / "refused")
    assert_one_line_error(result, "is a new random model (model.from_scratch=true), not a fine-tuned one",
                          "untrained head is almost always a mistake", "mode.fresh_head=true")
    fresh = ok([*QUICK, "mode=evaluate", "mode.fresh_head=true"], tmp_path / "fresh")
    assert fresh["model"]["kind"] == "fresh_head" and fresh["eval"]["num_examples"] == 40


def test_evaluate_a_model_of_another_task_or_without_weights(trained, tmp_path):
    run_dir, _ = trained
    data = sst2_dir(tmp_path / "data")
    other = train_in_process(["mode=evaluate", "task=stsb", *TINY_FAST, f"data_dir={data}",
                              f"model.name_or_path={run_dir / 'model'}"], tmp_path / "other")
    assert_one_line_error(other, "is fine-tuned for task 'quickstart' with a 'classification' head with labels negative, positive",
                          "task 'stsb' has a 'similarity' head with one regression output")
    import shutil

    broken = shutil.copytree(run_dir / "model", tmp_path / "no-weights")
    (broken / "model.safetensors").unlink()
    result = train_in_process([*QUICK, "mode=evaluate", f"model.name_or_path={broken}"], tmp_path / "none")
    assert_one_line_error(result, f"model.name_or_path '{broken}' has no weights", "not a complete exported model directory")


def test_predict_writes_one_row_per_example_with_label_names_and_probabilities(trained, tmp_path):
    run_dir, metrics = trained
    predicted = ok([*QUICK, "mode=predict", "task.predict_split=validation", f"model.name_or_path={run_dir / 'model'}"],
                   tmp_path / "pred")
    table = (tmp_path / "pred" / "predictions" / "validation.tsv").read_text().splitlines()
    header, rows = table[0].split("\t"), [line.split("\t") for line in table[1:]]
    assert header == ["id", "prediction", "probability", "label", "prob_negative", "prob_positive"]
    assert len(rows) == 40 and [int(r[0]) for r in rows] == list(range(40))
    for row in rows:
        probs = {"negative": float(row[4]), "positive": float(row[5])}
        assert row[1] == max(probs, key=probs.get) and float(row[2]) == max(probs.values())
        assert abs(sum(probs.values()) - 1) < 1e-5
    accuracy = sum(r[1] == r[3] for r in rows) / len(rows)
    assert predicted["eval"]["accuracy"] == pytest.approx(accuracy) == pytest.approx(metrics["eval"]["accuracy"])
    assert predicted["predictions"]["validation"]["rows"] == 40


def _glue_sst2(root):
    """An SST-2 layout with a GLUE test file: `index<TAB>sentence`, no labels."""
    sst2_dir(root)
    test = ["index\tsentence", *(f"{i}\t{row.split(chr(9))[0]}" for i, row in enumerate(SST2_DEV + SST2_TRAIN))]
    write(root / "glue" / "SST-2" / "test.tsv", lines(*test))
    return root, len(test) - 1


def test_predict_on_an_unlabelled_glue_test_file_writes_the_leaderboard_file(tmp_path):
    data, count = _glue_sst2(tmp_path / "data")
    sst2 = ["task=sst2", *TINY_FAST, f"data_dir={data}", "trainer.max_steps=2", "trainer.batch_size=4"]
    ok(sst2, tmp_path / "train")
    predicted = ok([*sst2, "mode=predict", f"model.name_or_path={tmp_path / 'train' / 'model'}"], tmp_path / "pred")
    glue = (tmp_path / "pred" / "glue" / "SST-2.tsv").read_text().splitlines()
    assert glue[0] == "index\tprediction" and len(glue) == 1 + count
    assert [line.split("\t")[0] for line in glue[1:]] == [str(i) for i in range(count)]
    assert {line.split("\t")[1] for line in glue[1:]} <= {"0", "1"}
    table = (tmp_path / "pred" / "predictions" / "test.tsv").read_text().splitlines()
    assert table[0].split("\t") == ["id", "prediction", "probability", "prob_negative", "prob_positive"]  # no label column
    assert "eval" not in predicted and predicted["data"]["test"]["labelled"] is False


def test_predict_names_the_splits_a_task_has_and_rejects_an_unexpected_test_file(tmp_path):
    data, _ = _glue_sst2(tmp_path / "data")
    sst2 = ["task=sst2", *TINY_FAST, f"data_dir={data}", "trainer.max_steps=1", "trainer.batch_size=4"]
    ok(sst2, tmp_path / "train")
    model = f"model.name_or_path={tmp_path / 'train' / 'model'}"
    result = train_in_process([*sst2, "mode=predict", model, "task.predict_split=dev"], tmp_path / "nosplit")
    assert_one_line_error(result, "no local 'dev' split is configured (task.local.splits has train, validation, test)")
    write(data / "glue" / "SST-2" / "test.tsv", lines("index\ttext", "0\ta fine film ."))
    result = train_in_process([*sst2, "mode=predict", model], tmp_path / "columns")
    assert_one_line_error(result, "test.tsv: column 'sentence' (task.local.columns.text) not found; columns are: index, text")


# Leaderboard formats, from the GLUE submission instructions (gluebenchmark.com: one file per task,
# header "index<TAB>prediction"); the task YAMLs must produce exactly these values.
GLUE_FORMATS = {
    "cola": ({"test": "CoLA.tsv"}, {"unacceptable": "0", "acceptable": "1"}),
    "sst2": ({"test": "SST-2.tsv"}, {"negative": "0", "positive": "1"}),
    "mrpc": ({"test": "MRPC.tsv"}, {"not_equivalent": "0", "equivalent": "1"}),
    "stsb": ({"test": "STS-B.tsv"}, None),
    "qqp": ({"test": "QQP.tsv"}, {"not_duplicate": "0", "duplicate": "1"}),
    "mnli": ({"test_matched": "MNLI-m.tsv", "test_mismatched": "MNLI-mm.tsv"},
             {"entailment": "entailment", "neutral": "neutral", "contradiction": "contradiction"}),
    "qnli": ({"test": "QNLI.tsv"}, {"entailment": "entailment", "not_entailment": "not_entailment"}),
    "rte": ({"test": "RTE.tsv"}, {"entailment": "entailment", "not_entailment": "not_entailment"}),
    "wnli": ({"test": "WNLI.tsv"}, {"not_entailment": "0", "entailment": "1"}),
}


@pytest.mark.parametrize("task", sorted(GLUE_FORMATS))
def test_glue_submission_mapping_matches_the_leaderboard_format(task):
    from conftest import compose_config
    from finetune.config import predict_splits
    from finetune.outputs.predictions import write_submission

    files, values = GLUE_FORMATS[task]
    cfg = compose_config([f"task={task}"]).task
    submission = OmegaConf.to_container(cfg.submission)
    assert submission["files"] == files
    assert set(predict_splits(cfg)) == set(files)
    for split in files:  # a test split on the Hub and locally
        assert split in cfg.local.splits and cfg.hub.splits.get(split, split) == split
    if values is None:
        assert cfg.labels is None and not submission.get("labels")
    else:
        assert {k: str(v) for k, v in submission["labels"].items()} == values
        assert set(values) == set(cfg.labels)


def test_submission_files_hold_ids_and_leaderboard_values(tmp_path):
    from finetune.outputs.predictions import write_submission

    rows = [{"id": 7, "prediction": "not_entailment"}, {"id": 3, "prediction": "entailment"}]
    (path,) = write_submission(tmp_path, {"files": {"test": "RTE.tsv"}, "labels": GLUE_FORMATS["rte"][1]}, {"test": rows})
    assert path.read_text() == "index\tprediction\n7\tnot_entailment\n3\tentailment\n"
    (path,) = write_submission(tmp_path, {"files": {"test": "STS-B.tsv"}}, {"test": [{"id": 0, "prediction": 3.14159}]})
    assert path.read_text() == "index\tprediction\n0\t3.142\n"


# --------------------------------------------------------------------------- early stopping


def _fake_evaluations(monkeypatch, values):
    from finetune.training import loop

    sequence = iter(values)

    def evaluate_split(accelerator, model, loader, metrics, features, examples):
        value = next(sequence)
        return {"accuracy": value, "f1": value, "num_examples": len(features)}

    monkeypatch.setattr(loop, "evaluate_split", evaluate_split)


def test_early_stopping_stops_after_patience_evaluations_without_a_min_delta_improvement(tmp_path, monkeypatch):
    # Evaluations every 2 steps: 0.5, 0.6 (best so far), 0.605 (best, but not by more than 0.01), 0.61.
    _fake_evaluations(monkeypatch, [0.5, 0.6, 0.605, 0.61, 0.9, 0.9])
    metrics = ok([*QUICK, "trainer.max_steps=12", "trainer.eval_every=2", "trainer.early_stopping.patience=2",
                  "trainer.early_stopping.min_delta=0.01"], tmp_path / "run")
    assert metrics["train"]["stopped_early"] is True and metrics["train"]["stopped_at_step"] == 8
    assert metrics["train"]["steps"] == 8 and [h["step"] for h in metrics["history"]] == [2, 4, 6, 8]
    assert metrics["best_step"] == 8 and metrics["eval"]["accuracy"] == 0.61  # best checkpoint: plain improvement
    assert "early stopping at step 8" in (tmp_path / "run" / "train.log").read_text()


def test_a_min_metric_keeps_the_lowest_evaluation(tmp_path, monkeypatch):
    _fake_evaluations(monkeypatch, [0.5, 0.3, 0.4, 0.45])
    metrics = ok([*QUICK, "trainer.max_steps=8", "trainer.eval_every=2", "task.main_metric_mode=min"], tmp_path / "run")
    assert metrics["best_step"] == 4 and metrics["eval"]["accuracy"] == 0.3 and metrics["main_metric_mode"] == "min"
    assert metrics["train"]["stopped_early"] is False


def test_early_stopping_without_an_evaluation_before_the_end_is_a_one_line_error(tmp_path):
    result = train_in_process([*QUICK, "trainer.eval_every=50", "trainer.early_stopping.patience=2"], tmp_path / "run")
    assert_one_line_error(result, "trainer.early_stopping.patience=2 needs evaluations during training",
                          "trainer.eval_every=50", "set trainer.eval_every below 12")


def test_optuna_direction_follows_the_main_metric_mode():
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="pip install -e .[sweep]")
    from hydra import compose, initialize_config_dir

    for mode, direction in (("max", "maximize"), ("min", "minimize")):
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose("train", overrides=["hparams_search=optuna", f"task.main_metric_mode={mode}"], return_hydra_config=True)
        assert cfg.hydra.sweeper.direction == direction


# ---------------------------------------------------------------- what a run records about itself


def test_a_run_records_environment_curves_and_a_model_card(trained):
    run_dir, metrics = trained
    env = metrics["environment"]
    assert env["num_processes"] == 1 and env["mixed_precision"] == "no" and env["device"] == "cpu"
    assert env["host_allocator"] == ("reuse" if allocator._glibc() is not None else "system")  # trainer.reuse_host_memory
    assert {"torch", "transformers", "accelerate", "datasets"} <= set(env["packages"])
    assert env["python"].count(".") == 2 and "trainer.max_steps=12" in env["overrides"]
    assert env["git_commit"] is None or len(env["git_commit"]) == 40
    png = (run_dir / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    assert width >= 800 and height >= 250
    card = (run_dir / "model" / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["base_model"] == "tiny" and "quickstart" in front["tags"]
    results = front["model-index"][0]["results"][0]
    assert {m["type"]: m["value"] for m in results["metrics"]}["accuracy"] == pytest.approx(metrics["eval"]["accuracy"], abs=1e-6)
    assert 'pipeline("text-classification"' in card and "0: `negative`, 1: `positive`" in card
    assert metrics["train"]["examples_per_second"] > 0 and len(metrics["history"]) == 3


def test_the_console_shows_a_summary_with_the_outputs(trained, tmp_path):
    result = train_in_process([*QUICK, "trainer.max_steps=4"], tmp_path / "run")
    assert result.code in (0, None)
    summary = result.stdout.splitlines()[-5:]
    assert summary[0].startswith("quickstart (train): accuracy=") and summary[0].endswith(f"outputs in {tmp_path / 'run'}")
    assert summary[1].startswith("  best accuracy=") and "trained" in summary[2] and "examples/s" in summary[2]
