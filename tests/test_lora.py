"""LoRA with peft (finetune.models.lora) and activation checkpointing.

Exports are checked for every head on a tiny base whose adapters and head hold random non-zero
weights (a fresh LoRA update is zero and would hide a lost adapter): the merged `model/` and the
`adapter/` (loaded by peft itself) must score like the framework's unmerged model. A short LoRA
training run (`lora_run`, in this process) shows what trains, what metrics.json records, that
mode=evaluate reads model/, adapter/ and a checkpoint alike, and that resuming is exact.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel, AutoTokenizer, pipeline

from conftest import ROOT, TINY_FAST, lora_args
from finetune.data.input_formats import FORMATS, make_collator
from finetune.data.formats import configure_tokenizer
from finetune.models.heads import HEADS
from finetune.models.artifacts import ADAPTER_CONFIG, ADAPTER_WEIGHTS, load_adapter, merged_record, write_adapter
from finetune.models.lora import apply_lora, merge
from finetune.models.artifacts import export, load_exported, manifest_for
from finetune.models.task_model import TaskModel, build_head
from finetune.training.optim import build_optimizer, parameter_groups
from test_bad_inputs import assert_one_line_error, train_in_process

EVALUATE = ["experiment=quickstart", *TINY_FAST, "trainer.max_eval_samples=48", "mode=evaluate"]
SETTINGS = {"r": 4, "alpha": 8.0, "dropout": 0.0, "target_modules": ["c_attn", "c_proj", "c_fc"]}
TEXTS = ["the film is not good .", "every scene feels truly brilliant overall .", "dull"]
PAIRS = ["a man plays a guitar .", "the film is long", "nothing happens at all ."]


@pytest.fixture(scope="module")
def tokenizer():
    tok = AutoTokenizer.from_pretrained(ROOT / "data" / "tiny-tokenizer")
    configure_tokenizer(tok, gpt1_tokens=False)
    return tok


def task_model(base: Path, head: str, num_labels: int, tokenizer, settings=SETTINGS, seed: int = 0, dropout: float = 0.0) -> TaskModel:
    """A LoRA task model on `base` whose adapters and head are random and non-zero (dropout off by default)."""
    torch.manual_seed(seed)
    backbone = AutoModel.from_pretrained(base, dtype=torch.float32, resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout)
    backbone.config.pad_token_id = tokenizer.pad_token_id
    model = TaskModel(backbone, build_head(head, 64, num_labels, dropout, {}, init_std=0.02))
    if settings is not None:
        apply_lora(model, {**settings, "dropout": dropout}, base_model=str(base))
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_" in name:
                    param.normal_(0, 0.3)
    return model.eval()


def batch_for(head: str, tokenizer) -> dict:
    if head == "span":  # `question delim context`, as span.py encodes it (no windows needed here)
        return dict(tokenizer(TEXTS, PAIRS, padding=True, return_tensors="pt"))
    rows = {
        "classification": {"text": TEXTS},
        "similarity": {"text": TEXTS, "text_pair": PAIRS},
        "multiple_choice": {"context": TEXTS, "choices": [[p, t] for p, t in zip(PAIRS, reversed(TEXTS))]},
    }[head]
    input_format = HEADS[head].format_for({})
    features = FORMATS[input_format].features(rows, tokenizer, 64, {}, False)
    examples = [{k: v[i] for k, v in features.items() if k != "truncated"} for i in range(len(TEXTS))]
    return make_collator(input_format, tokenizer)(examples)


def logits_of(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch)["logits"]


HEAD_CASES = {"classification": 2, "similarity": 1, "multiple_choice": 2, "span": 2}


@pytest.mark.parametrize("head", list(HEAD_CASES))
def test_merged_model_and_adapter_score_like_the_unmerged_model(head, tiny_base, tokenizer, tmp_path):
    model = task_model(tiny_base, head, HEAD_CASES[head], tokenizer)
    batch = batch_for(head, tokenizer)
    reference = logits_of(model, batch)
    labels = None if head == "similarity" else ["a", "b"] if head != "span" else None
    task = SimpleNamespace(name=f"t-{head}", head=head, head_args={}, max_length=64, local=None, hub=None)
    manifest = manifest_for(model, tokenizer, task, labels)
    assert manifest["peft"]["r"] == 4 and manifest["peft"]["base_model"] == str(tiny_base)
    adapter = write_adapter(model, tokenizer, manifest, tmp_path / "adapter")
    merged = merge(model)
    assert not any("lora" in name for name, _ in merged.named_parameters())
    export(merged, tokenizer, task, labels, tmp_path / "model", merged_adapters=merged_record(adapter))
    assert (tmp_path / "adapter" / ADAPTER_CONFIG).is_file() and (tmp_path / "adapter" / ADAPTER_WEIGHTS).is_file()

    exported, _, exported_manifest = load_exported(tmp_path / "model")
    assert exported_manifest["merged_adapters"][0]["sha256"] == adapter["sha256"]
    torch.testing.assert_close(logits_of(exported, batch), reference, rtol=1e-4, atol=1e-5)
    from_adapter, _, _ = load_adapter(tmp_path / "adapter")
    torch.testing.assert_close(logits_of(from_adapter, batch), reference, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("head", ["classification", "span", "multiple_choice"])
def test_adapter_loads_with_peft_on_its_base_head_included(head, tiny_base, tokenizer, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForQuestionAnswering, AutoModelForSequenceClassification

    model = task_model(tiny_base, head, HEAD_CASES[head], tokenizer, seed=1)
    batch = batch_for(head, tokenizer)
    reference = logits_of(model, batch)
    task = SimpleNamespace(name="t", head=head, head_args={}, max_length=64, local=None, hub=None)
    write_adapter(model, tokenizer, manifest_for(model, tokenizer, task, None), tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / ADAPTER_CONFIG).read_text())
    assert config["base_model_name_or_path"] == str(tiny_base) and config["fan_in_fan_out"] is True
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    if head == "classification":
        base = AutoModelForSequenceClassification.from_pretrained(config["base_model_name_or_path"], num_labels=2)
        base.config.pad_token_id = tokenizer.pad_token_id
        peft_model = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
        with torch.no_grad():
            torch.testing.assert_close(peft_model(**inputs).logits, reference, rtol=1e-4, atol=1e-5)
    elif head == "span":
        base = AutoModelForQuestionAnswering.from_pretrained(config["base_model_name_or_path"])
        peft_model = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
        with torch.no_grad():
            out = peft_model(**inputs)
        real = batch["attention_mask"].bool()
        torch.testing.assert_close(out.start_logits[real], reference[..., 0][real], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(out.end_logits[real], reference[..., 1][real], rtol=1e-4, atol=1e-5)
    else:  # no transformers class: the adapter adapts the base GPT2Model, head.safetensors holds the head
        peft_model = PeftModel.from_pretrained(AutoModel.from_pretrained(tiny_base), tmp_path / "adapter").eval()
        flat = batch["input_ids"].view(-1, batch["input_ids"].shape[-1])
        with torch.no_grad():
            expected = model.backbone(input_ids=flat).last_hidden_state
            torch.testing.assert_close(peft_model(input_ids=flat).last_hidden_state, expected, rtol=1e-4, atol=1e-5)
        assert set(load_file(str(tmp_path / "adapter" / "head.safetensors"))) == {"score.weight"}


def test_only_adapters_and_head_train_and_weight_decay_rules_hold(tiny_base, tokenizer):
    model = task_model(tiny_base, "classification", 2, tokenizer, settings={**SETTINGS, "target_modules": ["c_attn"]})
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"head.score.weight"} | {f"backbone.base_model.model.h.{i}.attn.c_attn.lora_{ab}.default.weight"
                                                  for i in range(2) for ab in "AB"}
    decay, no_decay = parameter_groups(model, 0.01)
    assert sum(p.numel() for p in decay["params"]) == 2 * (4 * 64 + 192 * 4) + 2 * 64 and no_decay["params"] == []
    optimizer = build_optimizer(model, SimpleNamespace(lr=1e-3, weight_decay=0.01, betas=[0.9, 0.999], eps=1e-8, fused=None), False)
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(trainable)


# ------------------------------------------------------------------------ activation checkpointing


def _train_steps(model, batches, steps: int = 3) -> dict:
    optimizer = build_optimizer(model, SimpleNamespace(lr=5e-3, weight_decay=0.01, betas=[0.9, 0.999], eps=1e-8, fused=None), False)
    model.train()
    for step in range(steps):
        batch = batches[step % len(batches)]
        model(**batch)["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return {name: p.detach().clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_activation_checkpointing_recomputes_and_leaves_the_weights_unchanged(lora, tiny_base, tokenizer):
    """Dropout on (backbone, head and adapters): non-reentrant checkpointing replays the RNG state in
    the recompute, so the weights after 3 steps are bit for bit those without it."""
    from transformers.models.gpt2.modeling_gpt2 import GPT2Block

    from finetune.models.backbone import enable_activation_checkpointing

    batch = {**batch_for("classification", tokenizer), "labels": torch.tensor([0, 1, 1])}
    settings = SETTINGS if lora else None
    plain = task_model(tiny_base, "classification", 2, tokenizer, settings=settings, dropout=0.1)
    checkpointed = task_model(tiny_base, "classification", 2, tokenizer, settings=settings, dropout=0.1)
    enable_activation_checkpointing(checkpointed.backbone)
    calls = []
    # transformers checkpoints a block's forward (its own hooks stay outside): count its attention's calls.
    handles = [m.attn.register_forward_pre_hook(lambda *_: calls.append(1)) for m in checkpointed.modules() if isinstance(m, GPT2Block)]
    torch.manual_seed(7)
    after_checkpointed = _train_steps(checkpointed, [batch])
    for handle in handles:
        handle.remove()
    assert len(calls) == 3 * 2 * 2, "each of the 2 blocks runs twice per step (forward + recompute)"
    torch.manual_seed(7)
    after_plain = _train_steps(plain, [batch])
    assert after_plain.keys() == after_checkpointed.keys()
    different = [k for k in after_plain if not torch.equal(after_plain[k], after_checkpointed[k])]
    assert not different, different
    torch.manual_seed(8)  # and the dropout is really on: another draw gives other weights
    again = _train_steps(task_model(tiny_base, "classification", 2, tokenizer, settings=settings, dropout=0.1), [batch])
    assert any(not torch.equal(after_plain[k], again[k]) for k in after_plain)


# ------------------------------------------------------------------------------- memory estimate


def test_memory_estimate_counts_the_trainable_state_and_measures_activations(tiny_base, tokenizer):
    from finetune.models.backbone import enable_activation_checkpointing
    from finetune.training.memory import estimate, measured_activations, saved_activation_bytes

    batch = {**batch_for("classification", tokenizer), "labels": torch.tensor([0, 1, 1])}
    same_length = {k: v[[1, 1, 1]] for k, v in batch.items()}  # 3 copies of the longest sequence
    one = {k: v[[1]] for k, v in batch.items()}
    full = task_model(tiny_base, "classification", 2, tokenizer, settings=None)
    lora = task_model(tiny_base, "classification", 2, tokenizer)
    rng = torch.get_rng_state()
    single, triple = saved_activation_bytes(full, one), saved_activation_bytes(full, same_length)
    assert torch.equal(torch.get_rng_state(), rng) and not full.training  # the probe leaves RNG and mode alone
    assert abs(triple - 3 * single) < 0.05 * triple  # what a forward keeps grows with the tokens
    tokens = 32 * one["input_ids"].shape[1]
    full_act, lora_act = measured_activations(full, one, tokens), measured_activations(lora, one, tokens)
    assert full_act == pytest.approx(32 * single, rel=1e-6)
    assert lora_act < full_act  # frozen projections keep no input for a weight gradient
    enable_activation_checkpointing(lora.backbone)
    assert measured_activations(lora, one, tokens) < 0.6 * lora_act  # block inputs + one recomputed block

    trainable = sum(p.numel() for p in lora.parameters() if p.requires_grad)
    result = estimate(lora, lora_act, tokens)
    assert (result.gradients, result.optimizer) == (4 * trainable, 8 * trainable)
    assert result.weights == sum(p.numel() * 4 for p in lora.parameters()) + sum(b.numel() * b.element_size() for b in lora.buffers())
    assert result.total == result.weights + result.gradients + result.optimizer + lora_act


# --------------------------------------------------------------------------- a LoRA training run


def test_lora_run_trains_only_adapters_and_head_and_reports_parameters_and_memory(lora_run, tiny_base):
    metrics = json.loads((lora_run / "metrics.json").read_text())
    train = metrics["train"]
    # r=8 on c_attn (64 -> 192) and c_fc (64 -> 256) in 2 blocks, plus the 2 x 64 head.
    assert train["trainable_parameters"] == 2 * (8 * 64 + 192 * 8 + 8 * 64 + 256 * 8) + 2 * 64
    base_parameters = sum(p.numel() for p in AutoModel.from_pretrained(tiny_base).parameters())
    assert train["total_parameters"] == base_parameters + train["trainable_parameters"]
    # RSS growth of a tiny model's few steps can be 0 (freed pages reused), never negative.
    assert train["peak_memory_mb"] >= 0 and train["peak_memory_kind"] == "cpu_rss_growth"
    estimated = train["memory_estimate_mb"]
    assert estimated["activations"] > 0 and estimated["tokens_per_micro_batch"] > 0
    assert estimated["total"] == pytest.approx(sum(estimated[k] for k in ("weights", "gradients", "optimizer", "activations")), abs=0.2)
    log = (lora_run / "train.log").read_text()
    assert "trainable 9.3K of 157.8K (5.9%) (LoRA r=8 on c_attn, c_fc, and the head)" in log
    assert "memory estimate: weights" in log
    # The backbone's own weights stayed those of the base; the adapters and the head moved.
    state = load_file(str(lora_run / "checkpoints" / "step-9" / "model.safetensors"))
    base = load_file(str(tiny_base / "model.safetensors"))
    layer = "backbone.base_model.model.h.1.attn.c_attn"
    assert torch.equal(state[f"{layer}.base_layer.weight"], base["transformer.h.1.attn.c_attn.weight"])
    assert torch.equal(state["backbone.base_model.model.wte.weight"], base["transformer.wte.weight"])
    assert state[f"{layer}.lora_B.default.weight"].abs().sum() > 0
    manifest = json.loads((lora_run / "adapter" / "finetune.json").read_text())
    assert manifest["peft"]["target_modules"] == ["c_attn", "c_fc"] and manifest["peft"]["base_model"] == str(tiny_base)


def test_lora_run_merged_model_gives_the_framework_predictions_through_pipeline(lora_run):
    from finetune.models.artifacts import load_checkpoint_model

    metrics = json.loads((lora_run / "metrics.json").read_text())
    framework, tokenizer, manifest = load_checkpoint_model(lora_run / "checkpoints" / f"step-{metrics['best_step']}")
    assert type(framework.backbone).__name__ == "PeftModel"  # the checkpoint is rebuilt with its adapters
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    expected = logits_of(framework, batch).softmax(-1)
    classify = pipeline("text-classification", model=str(lora_run / "model"), top_k=None, device="cpu")
    for scores, want in zip(classify(TEXTS), expected):
        by_label = {item["label"]: item["score"] for item in scores}
        torch.testing.assert_close(torch.tensor([by_label[name] for name in manifest["labels"]]), want, rtol=1e-4, atol=1e-5)


def test_evaluate_and_predict_read_the_merged_model_and_the_adapter_alike(lora_run, tmp_path):
    """(A LoRA checkpoint is rebuilt with its adapters: see the pipeline test above.)"""
    trained = json.loads((lora_run / "metrics.json").read_text())
    results = {}
    for name, path in {"model": lora_run / "model", "adapter": lora_run / "adapter"}.items():
        result = train_in_process([*EVALUATE, f"model.name_or_path={path}"], tmp_path / name)
        assert result.code in (0, None), result.stderr[-3000:]
        results[name] = json.loads((tmp_path / name / "metrics.json").read_text())
    assert results["adapter"]["model"]["kind"] == "adapter"
    for name, metrics in results.items():
        assert metrics["eval"] == pytest.approx(trained["eval"], abs=1e-9), name
    predict = train_in_process([*EVALUATE[:-1], "mode=predict", "task.predict_split=validation",
                                f"model.name_or_path={lora_run / 'adapter'}"], tmp_path / "predict")
    assert predict.code in (0, None), predict.stderr[-3000:]
    predicted = json.loads((tmp_path / "predict" / "metrics.json").read_text())
    assert predicted["predictions"]["validation"]["rows"] == 48
    assert predicted["eval"] == pytest.approx(trained["eval"], abs=1e-9)


def assert_same_files(a: Path, b: Path, *relative: str) -> None:
    for name in relative:
        wa, wb = load_file(str(a / name)), load_file(str(b / name))
        different = [k for k in wa if not torch.equal(wa[k], wb[k])]
        assert wa.keys() == wb.keys() and not different, (name, different[:3])


def test_resume_mid_epoch_with_lora_gives_the_uninterrupted_weights(lora_run, tiny_base, tmp_path, monkeypatch):
    """Killed in step 7, after the step-6 checkpoint; resumed in epoch 1 at batch 2 (4 steps per
    epoch), it must end with `lora_run`'s weights, adapter and metrics (dropout on: the RNG counts)."""
    from finetune.training import loop

    real_step = loop.Trainer._train_step

    def dies_in_step_7(self, window):
        if self.progress.step == 6:
            raise KeyboardInterrupt  # the process dies: nothing after the step-6 checkpoint is saved
        return real_step(self, window)

    monkeypatch.setattr(loop.Trainer, "_train_step", dies_in_step_7)
    killed = train_in_process(lora_args(tiny_base), tmp_path / "run")
    assert killed.code not in (0, None) and not (tmp_path / "run" / "metrics.json").exists()
    monkeypatch.setattr(loop.Trainer, "_train_step", real_step)
    resumed = train_in_process([*lora_args(tiny_base), "trainer.resume=latest"], tmp_path / "run")
    assert resumed.code in (0, None), resumed.stderr[-3000:]
    assert "resumed from step 6 (epoch 1, batch 2 of the epoch)" in (tmp_path / "run" / "train.log").read_text()
    assert_same_files(lora_run, tmp_path / "run", "checkpoints/step-9/model.safetensors", "adapter/adapter_model.safetensors",
                      "model/model.safetensors")
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (lora_run, tmp_path / "run"))
    assert ma["history"] == mb["history"] and ma["best_step"] == mb["best_step"]


# ------------------------------------------------------------------------------------ bad input


def fails(args: list[str], run_dir: Path, *expected: str) -> str:
    return assert_one_line_error(train_in_process(args, run_dir), *expected)


def test_adapter_for_another_task_head(lora_run, tmp_path):
    fails([*TINY_FAST, "task=stsb", f"data_dir={tmp_path}", "mode=evaluate", f"model.name_or_path={lora_run / 'adapter'}"],
          tmp_path / "run",
          "is fine-tuned for task 'quickstart' with a 'classification' head", "task 'stsb' has a 'similarity' head")


def test_adapter_on_a_base_of_another_shape(lora_run, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    other = tmp_path / "wide-base"
    GPT2LMHeadModel(GPT2Config(vocab_size=499, n_layer=2, n_embd=32, n_head=2, n_positions=256)).save_pretrained(other)
    fails([*EVALUATE, f"model.name_or_path={lora_run / 'adapter'}", f"model.adapter_base={other}"],
          tmp_path / "run", f"adapter '{lora_run / 'adapter'}' was trained on a base with n_embd=64", f"'{other}' has n_embd=32",
          "model.adapter_base=")


def test_adapter_put_on_the_model_it_is_merged_into(lora_run, tmp_path):
    """The merged model/ already holds the adapter: applying adapter/ to it would add the update twice."""
    fails([*EVALUATE, f"model.name_or_path={lora_run / 'adapter'}", f"model.adapter_base={lora_run / 'model'}"], tmp_path / "run",
          f"adapter '{lora_run / 'adapter'}' is already merged into '{lora_run / 'model'}'", "add its update twice")


def test_adapter_without_a_base(lora_run, tmp_path):
    import shutil

    adapter = shutil.copytree(lora_run / "adapter", tmp_path / "adapter")
    config = json.loads((adapter / ADAPTER_CONFIG).read_text())
    (adapter / ADAPTER_CONFIG).write_text(json.dumps({**config, "base_model_name_or_path": None}))
    fails([*EVALUATE, f"model.name_or_path={adapter}"], tmp_path / "run",
          f"adapter '{adapter}' does not say which base model it adapts", "set model.adapter_base=<the base model>")


def test_training_from_an_adapter_directory(lora_run, tmp_path):
    fails(["experiment=quickstart", *TINY_FAST, "model.from_scratch=false", "peft=lora", f"model.name_or_path={lora_run / 'adapter'}"],
          tmp_path / "run",
          "is a LoRA adapter, not a model", "model/ directory")


def test_resuming_a_lora_checkpoint_without_lora(lora_run, tiny_base, tmp_path):
    checkpoint = lora_run / "checkpoints" / "step-3"
    full = [arg for arg in lora_args(tiny_base) if not arg.startswith("peft")]
    fails([*full, f"trainer.resume={checkpoint}"], tmp_path / "run",
          f"checkpoint '{checkpoint}' was written for trainable_parameters=9344, this run has trainable_parameters=148544")
