"""`train.py` in a subprocess, as a user runs it: the run directory and the exported model."""

import json

import pytest
import torch
from transformers import pipeline

from conftest import run_train
from finetune.models.artifacts import load_exported


@pytest.fixture(scope="module")
def quickstart_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("quickstart")
    result = run_train(["experiment=quickstart", "trainer.epochs=2", "trainer.progress_bar=false", f"hydra.run.dir={run_dir}"])
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir, result


def test_run_directory_holds_config_metrics_log_model_and_checkpoints(quickstart_run):
    run_dir, result = quickstart_run
    assert (run_dir / "config.yaml").is_file() and (run_dir / ".hydra" / "config.yaml").is_file()
    assert (run_dir / "train.log").stat().st_size > 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics["eval"]) >= {"accuracy", "f1", "num_examples"}
    assert metrics["eval"]["num_examples"] == 400  # the full dev set, each example once
    assert len(metrics["history"]) == 2  # one evaluation per epoch
    assert metrics["eval"]["accuracy"] > 0.75  # synthetic sentiment: chance is 0.5
    assert (run_dir / "model" / "model.safetensors").is_file() and (run_dir / "model" / "finetune.json").is_file()
    assert any(p.name.startswith("step-") for p in (run_dir / "checkpoints").iterdir())
    assert str(run_dir) in result.stdout  # ends by printing where its outputs are


def test_exported_model_gives_the_framework_predictions_through_pipeline(quickstart_run, tiny_tokenizer):
    run_dir, _ = quickstart_run
    model, tokenizer, manifest = load_exported(run_dir / "model")
    texts = ["the film is not good .", "every scene feels truly brilliant overall .", "the script was dull"]
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        ours = model(**batch)["logits"].softmax(-1)
    classify = pipeline("text-classification", model=str(run_dir / "model"), top_k=None, device="cpu")
    for text_scores, expected in zip(classify(texts), ours):
        by_label = {item["label"]: item["score"] for item in text_scores}
        got = torch.tensor([by_label[name] for name in manifest["labels"]])
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
