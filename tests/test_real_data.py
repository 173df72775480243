"""Quality on real data: the mini pretrained GPT-2 fine-tuned on SST-2 from ../shared/data (CPU).

Skipped when ../shared/data is absent. The run is the issue's "done means" command (300 steps at the
default lr 5e-5, batch 32). Calibration (2 CPU cores, 2026-11-23): full SST-2 dev accuracy 0.7546
(CPU runs are deterministic; 0.7431 in two runs before the head took GPT-2's N(0, 0.02) init);
majority class 0.5092. The threshold 0.70 leaves room for a machine whose float summation order
differs.
"""

import csv
import json

import pytest
import torch
from transformers import pipeline

from conftest import MINI_MODEL, SHARED_DATA, requires_shared_data, run_train
from finetune.models.artifacts import load_exported

pytestmark = [requires_shared_data, pytest.mark.slow, pytest.mark.realdata]

STEPS = 300


@pytest.fixture(scope="module")
def sst2_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("sst2")
    result = run_train(
        [
            "task=sst2",
            f"data_dir={SHARED_DATA}",
            f"model.name_or_path={MINI_MODEL}",
            f"trainer.max_steps={STEPS}",
            "trainer.tracker=null",
            "trainer.progress_bar=false",
            f"hydra.run.dir={run_dir}",
        ],
        timeout=1500,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


def test_sst2_dev_accuracy_far_above_chance(sst2_run):
    metrics = json.loads((sst2_run / "metrics.json").read_text())
    assert metrics["eval"]["num_examples"] == 872  # the full SST-2 dev set
    assert metrics["eval"]["accuracy"] >= 0.70  # measured 0.7546; majority class 0.5092


def test_saved_model_reproduces_framework_predictions_through_pipeline(sst2_run):
    with open(SHARED_DATA / "glue" / "SST-2" / "dev.tsv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))[:48]
    texts = [row["sentence"] for row in rows]
    model, tokenizer, manifest = load_exported(sst2_run / "model")
    with torch.no_grad():
        ours = model(**tokenizer(texts, padding=True, return_tensors="pt"))["logits"].argmax(-1).tolist()
    classify = pipeline("text-classification", model=str(sst2_run / "model"), device="cpu")
    theirs = [manifest["labels"].index(item["label"]) for item in classify(texts, batch_size=16)]
    assert ours == theirs


def test_predict_writes_the_sst2_leaderboard_file_and_evaluate_reproduces_the_dev_metrics(sst2_run, tmp_path):
    from test_bad_inputs import train_in_process

    common = ["task=sst2", f"data_dir={SHARED_DATA}", f"model.name_or_path={sst2_run / 'model'}", "trainer.tracker=null"]
    predicted = train_in_process([*common, "mode=predict"], tmp_path / "predict")
    assert predicted.code in (0, None), predicted.stderr[-3000:]
    glue = (tmp_path / "predict" / "glue" / "SST-2.tsv").read_text().splitlines()
    assert glue[0] == "index\tprediction" and len(glue) == 1 + 1821  # the GLUE SST-2 test set
    assert [line.split("\t")[0] for line in glue[1:]] == [str(i) for i in range(1821)]
    assert len((tmp_path / "predict" / "predictions" / "test.tsv").read_text().splitlines()) == 1 + 1821
    evaluated = train_in_process([*common, "mode=evaluate"], tmp_path / "evaluate")
    assert evaluated.code in (0, None), evaluated.stderr[-3000:]
    trained = json.loads((sst2_run / "metrics.json").read_text())
    assert json.loads((tmp_path / "evaluate" / "metrics.json").read_text())["eval"] == trained["eval"]
