"""Every head x {full fine-tuning, peft=lora} x {bucketed, packed where its format packs}, end to end.

Each combination trains the tiny model on small made-up data in the real task layouts (test_inference's
files), exports, and then: `mode=evaluate` on model/ reproduces the training run's best evaluation
(and on adapter/ too, with LoRA); `mode=predict` and `finetune.load(model/)` and the head's finetune
pipeline give the same predictions; a language model's model/ generates with transformers' own
`pipeline("text-generation")` exactly what the run sampled; a LoRA adapter/ loads with peft on its
base. The combinations a head does not support are refused in one line before any work
(test_toy_head, test_lm, test_bad_inputs).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

import finetune
from conftest import TINY_FAST, compose_config
from finetune.data.input_formats import FORMATS
from finetune.models.heads import HEADS
from test_inference import write_data
from test_lm import SPEECHES, shakespeare_dir

CASES = {  # head -> (task overrides, which dev inputs of test_inference.write_data)
    "classification": (["task=sst2"], "sst2"),
    "entailment": (["task=rte"], "pairs"),
    "similarity": (["task=mrpc"], "pairs"),
    "multiple_choice": (["task=storycloze"], "storycloze"),
    "span": (["task=squad", "task.max_length=48", "task.head_args.stride=16", "task.head_args.max_answer_length=8"], "squad"),
    "lm": (["task=tinyshakespeare", "task.max_length=32", "task.head_args.generation.max_new_tokens=12"], None),
}
COMMON = [*TINY_FAST, "trainer.max_steps=3", "trainer.batch_size=8", "trainer.save_total_limit=1", "model.from_scratch=false",
          "trainer.max_train_samples=48", "trainer.max_eval_samples=16"]
LORA = ["peft=lora", "peft.target_modules=[c_attn,c_fc]", "optim.lr=5e-3"]


def batchings(head: str) -> list[str]:
    return ["bucketed", "packed"] if FORMATS[HEADS[head].format_for({})].packs else ["bucketed"]


COMBINATIONS = [(head, lora, batching) for head in CASES for lora in (False, True) for batching in batchings(head)]


def test_the_matrix_covers_every_head():
    assert {head for head, _, _ in COMBINATIONS} == set(HEADS)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("combinations")
    dev = write_data(root / "data")
    shakespeare_dir(root / "data", SPEECHES)
    return root / "data", dev


def run(args: list[str], out: Path) -> dict:
    from finetune.run import run as run_config
    from finetune.sweep import reset_accelerate_state

    try:
        run_config(compose_config(args, output_dir=out))
    finally:
        reset_accelerate_state()
    return json.loads((out / "metrics.json").read_text())


def close(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(pytest.approx(a[k], rel=1e-6, abs=1e-6) == b[k] for k in a)


def check_predictions(head: str, model_dir: Path, predict_dir: Path, inputs: list) -> None:
    """mode=predict, finetune.load and the finetune pipeline agree on every dev example."""
    from transformers import pipeline

    with open(predict_dir / "predictions" / "validation.tsv", encoding="utf-8", newline="") as handle:
        framework = list(csv.DictReader(handle, delimiter="\t"))
    inputs = inputs[: len(framework)]
    loaded = finetune.load(model_dir).predict(inputs)
    served = pipeline(HEADS[head].pipeline_task, model=str(model_dir), device="cpu")(inputs, batch_size=4)
    for ours in (loaded, served):
        assert [p["prediction"] for p in ours] == [row["prediction"] for row in framework]
        for mine, theirs in zip(ours, framework):
            if "probability" in mine:
                assert abs(mine["probability"] - float(theirs["probability"])) <= 1e-6


def check_generation(run_dir: Path) -> None:
    """model/ is a GPT2LMHeadModel that transformers' pipeline loads and that generates what the run sampled."""
    from transformers import pipeline

    sampled = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    last = [row for row in sampled if row["step"] == sampled[-1]["step"]]
    generate = pipeline("text-generation", model=str(run_dir / "model"), device="cpu")
    for row in last:
        assert generate(row["prompt"], return_full_text=False)[0]["generated_text"] == row["continuation"]


def check_adapter(head: str, run_dir: Path, base: Path) -> None:
    """adapter/ loads with peft on its base model, on the head's transformers class (or the bare backbone)."""
    import transformers
    from peft import PeftModel

    head_cls = HEADS[head]
    config = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(base)
    auto = getattr(transformers, head_cls.auto_class or "AutoModel")
    labels = {"num_labels": head_cls.transformers_num_labels(json.loads((run_dir / "model" / "finetune.json").read_text())["num_labels"])} \
        if head_cls.export_module else {}
    PeftModel.from_pretrained(auto.from_pretrained(base, **labels), str(run_dir / "adapter"))


@pytest.mark.parametrize("head, lora, batching", COMBINATIONS,
                         ids=[f"{h}-{'lora' if lo else 'full'}-{b}" for h, lo, b in COMBINATIONS])
def test_train_evaluate_predict_export_load(head, lora, batching, data, tiny_base, tmp_path, monkeypatch):
    monkeypatch.setattr("finetune.modes.train.write_curves", lambda *args, **kwargs: None)  # 0.6 s a run, tested elsewhere
    data_dir, dev = data
    task, inputs = CASES[head]
    args = [*task, *COMMON, f"data_dir={data_dir}", f"model.name_or_path={tiny_base}", f"trainer.batching={batching}",
            *(LORA if lora else [])]
    trained = run(args, tmp_path / "train")
    model_dir = tmp_path / "train" / "model"
    trained_with = ["model.tokenizer=null", f"model.name_or_path={model_dir}"]
    evaluated = run([*args, "mode=evaluate", *trained_with], tmp_path / "evaluate")
    assert close(evaluated["eval"], trained["eval"]), (evaluated["eval"], trained["eval"])
    if lora:
        from_adapter = run([*args, "mode=evaluate", "model.tokenizer=null", f"model.name_or_path={tmp_path / 'train' / 'adapter'}"],
                           tmp_path / "adapter")
        assert close(from_adapter["eval"], trained["eval"]), (from_adapter["eval"], trained["eval"])
        check_adapter(head, tmp_path / "train", tiny_base)
    if HEADS[head].predicts:
        run([*args, "mode=predict", "task.predict_split=validation", *trained_with], tmp_path / "predict")
        check_predictions(head, model_dir, tmp_path / "predict", dev[inputs])
    else:
        check_generation(tmp_path / "train")
