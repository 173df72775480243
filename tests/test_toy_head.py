"""A new head is one class plus one registry entry: this module adds one without touching src/.

`MeanPoolHead` classifies from the mean of the real tokens' hidden states (not the last token) and
has no transformers class, so it exports as the backbone plus head.safetensors. Registered in
HEADS for the test only, it trains, evaluates, predicts, exports, loads through `finetune.load`,
and trains with LoRA (adapter/ loads with peft), through the framework's own code paths; packed
batches, which it does not read, are refused in one line.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from torch import nn

import finetune
from conftest import TINY_FAST, compose_config
from finetune.errors import ConfigError
from finetune.models.heads import HEADS, Head

BASE = ["experiment=quickstart", *TINY_FAST, "task.head=mean_pool", "trainer.max_steps=6", "trainer.batch_size=16",
        "trainer.max_train_samples=96", "trainer.max_eval_samples=40", "trainer.save_total_limit=1"]


class MeanPoolHead(Head):
    """Dropout + linear on the mean of the real tokens' hidden states."""

    optional_roles = ("text_pair",)
    text_roles = ("text", "text_pair")
    reads_packed = False
    card_task = "text-classification"

    def __init__(self, hidden_size, num_labels, dropout, args):
        super().__init__(hidden_size, num_labels, dropout, args)
        self.dropout = nn.Dropout(dropout)
        self.score = nn.Linear(hidden_size, num_labels, bias=False)

    def forward(self, backbone, batch, reads=None):
        mask = batch["attention_mask"].unsqueeze(-1).to(torch.float32)
        hidden = backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).last_hidden_state
        pooled = (hidden * mask).sum(1) / mask.sum(1)
        return self.score(self.dropout(pooled))


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setitem(HEADS, "mean_pool", MeanPoolHead)
    monkeypatch.setattr("finetune.modes.train.write_curves", lambda *args, **kwargs: None)


def run(args: list[str], out: Path) -> dict:
    from finetune.run import run as run_config
    from finetune.sweep import reset_accelerate_state

    try:
        run_config(compose_config(args, output_dir=out))
    finally:
        reset_accelerate_state()
    return json.loads((out / "metrics.json").read_text())


def predictions_tsv(run_dir: Path) -> list[dict]:
    with open(run_dir / "predictions" / "validation.tsv", encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def dev_sentences(limit: int) -> list[str]:
    from conftest import ROOT

    with open(ROOT / "data" / "quickstart" / "dev.tsv", encoding="utf-8") as handle:
        return [line.split("\t")[0] for line in handle.read().splitlines()[1:limit + 1]]


def test_a_head_from_a_test_module_trains_evaluates_predicts_exports_and_loads(registered, tmp_path):
    trained = run(BASE, tmp_path / "train")
    model_dir = tmp_path / "train" / "model"
    assert json.loads((model_dir / "finetune.json").read_text())["head"] == "mean_pool"
    assert (model_dir / "head.safetensors").is_file()  # no transformers class: backbone + the head's weights

    evaluated = run([*BASE, "mode=evaluate", "model.tokenizer=null", f"model.name_or_path={model_dir}"], tmp_path / "evaluate")
    assert evaluated["eval"] == trained["eval"]

    run([*BASE, "mode=predict", "task.predict_split=validation", "model.tokenizer=null", f"model.name_or_path={model_dir}"],
        tmp_path / "predict")
    framework = predictions_tsv(tmp_path / "predict")
    ours = finetune.load(model_dir).predict(dev_sentences(len(framework)))
    assert [p["prediction"] for p in ours] == [row["prediction"] for row in framework]
    for mine, theirs in zip(ours, framework):
        assert abs(mine["probability"] - float(theirs["probability"])) <= 1e-6
    card = (model_dir / "README.md").read_text()
    assert "finetune.load" in card and 'pipeline("None"' not in card


def test_the_new_head_trains_with_lora_and_its_adapter_loads_with_peft(registered, tmp_path, tiny_base):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModel

    args = [*BASE, "model.from_scratch=false", f"model.name_or_path={tiny_base}", "peft=lora", "optim.lr=5e-3"]
    trained = run(args, tmp_path / "lora")
    adapter = tmp_path / "lora" / "adapter"
    from_adapter = run([*args, "mode=evaluate", "model.tokenizer=null", f"model.name_or_path={adapter}"], tmp_path / "evaluate")
    assert from_adapter["eval"]["accuracy"] == pytest.approx(trained["eval"]["accuracy"], abs=1e-9)

    predictor = finetune.load(tmp_path / "lora" / "model")
    backbone = PeftModel.from_pretrained(AutoModel.from_pretrained(tiny_base), str(adapter)).merge_and_unload().eval()
    head = MeanPoolHead(backbone.config.n_embd, 2, 0.0, {})
    head.load_state_dict(load_file(str(adapter / "head.safetensors")))
    batch = predictor.tokenizer(dev_sentences(4), return_tensors="pt", padding=True)
    with torch.no_grad():
        theirs = head(backbone, dict(batch)).softmax(-1)
    ours = torch.tensor([[p["probabilities"][name] for name in ("negative", "positive")] for p in predictor.predict(dev_sentences(4))],
                        dtype=torch.float64)
    torch.testing.assert_close(ours, theirs.double(), rtol=1e-4, atol=1e-5)


def test_packed_batches_are_refused_for_a_head_that_reads_padded_ones(registered, tmp_path):
    from finetune.run import check

    with pytest.raises(ConfigError, match="trainer.batching=packed: the 'mean_pool' head of task 'quickstart' reads padded batches only"):
        check(compose_config([*BASE, "trainer.batching=packed"], output_dir=tmp_path / "run"))
