"""Two processes (gloo on CPU) behave like one process with the same global batch.

One `accelerate launch` with 2 processes x batch 8 against `python train.py` with batch 16, same
seed, on the tiny model with dropout off. With dropout off both runs see the same examples in
every optimizer step, and DDP's gradient (mean over ranks of per-rank means over equal halves)
is the one-process mean: the runs differ only in floating-point summation order (~1e-7 relative).
Tolerances: weights atol 1e-4. AdamW divides each gradient by sqrt(v): for weights whose
gradients are near zero, rounding differences get amplified up to the size of one update (lr =
2e-3 here); 1e-4 = lr/20 (measured: 2e-6 to 1.1e-5), while resuming at a wrong data position or a
wrong gradient average moves weights by ~1e-3. Accuracy/F1: within one dev example (1/101), in case
a prediction sits on the decision boundary (in practice they are equal).

The dev split has 101 examples (odd, not a multiple of 2 processes or of the eval batch), so
Accelerate pads the last batch; `num_examples` must still be 101 on every evaluation.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT

needs_gloo = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="torch.distributed with gloo is needed for a 2-process CPU run",
)
ACCELERATE_CONFIGS = ROOT / "configs" / "accelerate"

DEV_SIZE = 101
COMMON = [
    "experiment=quickstart", "trainer.max_steps=6", "trainer.eval_every=3", f"trainer.max_eval_samples={DEV_SIZE}",
    "trainer.progress_bar=false", "trainer.log_every=3", "model.dropout=0", "model.head_dropout=0", "seed=3",
    # Random batches: 2 x 8 examples are the 16 of the one-process step. (Bucketed batches are whole
    # batches per process, so a 2-process step holds two buckets where one process holds one.)
    "trainer.batching=random",
]
# Microsecond timestamps: without the agreement in finetune.distributed, two ranks would always
# compose two different run directories (not just when they straddle a second).
RUN_DIR = "hydra.run.dir=${paths.log_dir}/${task.name}/${mode.name}/${ft.now:%Y-%m-%d_%H-%M-%S_%f}"
ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launch(args: list[str], cwd: Path, processes: int) -> subprocess.CompletedProcess:
    if processes == 1:
        command = [sys.executable, str(ROOT / "train.py"), *args]
    else:
        command = [
            sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", f"--num_processes={processes}",
            "--num_machines=1", "--mixed_precision=no", "--dynamo_backend=no", f"--main_process_port={_free_port()}",
            str(ROOT / "train.py"), *args,
        ]
    env = {**os.environ, **ENV, "ACCELERATE_USE_CPU": "1"}
    if processes > 1:
        env["OMP_NUM_THREADS"] = "1"  # 2 processes on a 2-core machine
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def _run_dirs(log_dir: Path) -> list[Path]:
    return sorted(p.parent for p in log_dir.rglob("metrics.json"))


def _weights(run_dir: Path, step: int) -> dict:
    from safetensors.torch import load_file

    return load_file(run_dir / "checkpoints" / f"step-{step}" / "model.safetensors")


def _assert_close_weights(a: dict, b: dict, atol: float = 1e-4) -> None:
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= atol, f"weights differ by up to {worst}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("dist")
    two = _launch([*COMMON, "trainer.batch_size=8", f"paths.log_dir={base / 'two'}", RUN_DIR], base, processes=2)
    one = _launch([*COMMON, "trainer.batch_size=16", f"paths.log_dir={base / 'one'}", RUN_DIR], base, processes=1)
    return {"base": base, "two": base / "two", "one": base / "one", "two_result": two, "one_result": one}


@pytest.mark.slow
@needs_gloo
def test_two_processes_write_one_run_directory(runs):
    log_dir = runs["two"]
    run_dirs = _run_dirs(log_dir)
    assert len(run_dirs) == 1, run_dirs
    task_dir = log_dir / "quickstart" / "train"
    assert [p.name for p in task_dir.iterdir()] == [run_dirs[0].name], "a rank composed its own run directory"
    assert len(list(log_dir.rglob(".hydra"))) == 1
    assert len(list(log_dir.rglob("*.log"))) == 1
    # The log file has each record once (rank 1 logs warnings to its console only).
    log_text = (run_dirs[0] / "train.log").read_text()
    assert log_text.count("step 6 eval:") == 1
    assert not (runs["base"] / "outputs").exists() and not (runs["base"] / "multirun").exists()


@pytest.mark.slow
@needs_gloo
def test_two_processes_match_one_process_with_same_global_batch(runs):
    (two,), (one,) = _run_dirs(runs["two"]), _run_dirs(runs["one"])
    m2, m1 = (json.loads((d / "metrics.json").read_text()) for d in (two, one))
    assert m2["environment"]["num_processes"] == 2 and m1["environment"]["num_processes"] == 1
    for metrics in (m1, m2):
        assert metrics["train"]["examples_seen"] == 6 * 16
        for record in metrics["history"]:
            assert record["eval_validation"]["num_examples"] == DEV_SIZE
    assert [r["step"] for r in m2["history"]] == [r["step"] for r in m1["history"]] == [3, 6]
    for r2, r1 in zip(m2["history"], m1["history"]):
        for key in ("accuracy", "f1"):
            assert r2["eval_validation"][key] == pytest.approx(r1["eval_validation"][key], abs=1 / DEV_SIZE + 1e-9)
    assert m2["best_step"] == m1["best_step"]
    _assert_close_weights(_weights(two, 6), _weights(one, 6))


@pytest.mark.slow
@needs_gloo
def test_resume_on_another_process_count(runs):
    """A 2-process checkpoint resumed by 1 process with batch 8 x grad_accum 2 (same global batch).

    The checkpoint says 3 batches per process = 48 examples into the epoch; one process of batch 8
    must skip 6 batches, not 3. The final weights then match the uninterrupted 2-process run.
    """
    (two,) = _run_dirs(runs["two"])
    resumed_dir = runs["base"] / "resumed"
    result = _launch([
        *COMMON, "trainer.batch_size=8", "trainer.grad_accum=2", f"trainer.resume={two / 'checkpoints' / 'step-3'}",
        f"hydra.run.dir={resumed_dir}",
    ], runs["base"], processes=1)
    output = result.stdout + result.stderr
    assert "resuming at example 48 of epoch 0 (batch 6 per process)" in output, output[-3000:]
    metrics = json.loads((resumed_dir / "metrics.json").read_text())
    assert metrics["train"]["steps"] == 6
    assert metrics["history"][-1]["eval_validation"]["num_examples"] == DEV_SIZE
    _assert_close_weights(_weights(resumed_dir, 6), _weights(two, 6))


# ------------------------------------------------------------------ configs/accelerate/*.yaml
# Loaded with Accelerate's own loader and taken through `accelerate launch`'s argument handling and
# environment preparation (everything short of starting processes). Only multi-process CPU runs
# can be executed here: single_gpu, multi_gpu, multi_node, fsdp and deepspeed_zero2 are checked
# for loading only (no GPU, no second machine, no deepspeed package on the development machine).
EXPECTED = {
    "single_gpu.yaml": ("NO", 1, 1),
    "multi_gpu.yaml": ("MULTI_GPU", 8, 1),
    "multi_node.yaml": ("MULTI_GPU", 16, 2),
    "fsdp.yaml": ("FSDP", 8, 1),
    "deepspeed_zero2.yaml": ("DEEPSPEED", 8, 1),
}


def test_every_accelerate_config_is_covered():
    assert sorted(p.name for p in ACCELERATE_CONFIGS.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_accelerate_config_loads_and_validates(name, monkeypatch):
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    path = ACCELERATE_CONFIGS / name
    config = load_config_from_file(str(path))  # raises on unknown top-level keys
    distributed_type, processes, machines = EXPECTED[name]
    assert (config.distributed_type.value, config.num_processes, config.num_machines) == (distributed_type, processes, machines)

    parser = launch_command_parser()
    known = vars(parser.parse_args(["x.py"]))
    for section in ("fsdp_config", "deepspeed_config"):
        for key in getattr(config, section) or {}:
            assert key in known, f"{name}: {section}.{key} is not an `accelerate launch` option"

    args, defaults, mp_from_config = _validate_launch_command(
        parser.parse_args(["--config_file", str(path), str(ROOT / "train.py"), "task=sst2"])
    )
    assert args.num_processes == processes and args.num_machines == machines
    if distributed_type == "DEEPSPEED":
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
        _, env = prepare_deepspeed_cmd_env(args)
        assert env["ACCELERATE_USE_DEEPSPEED"] == "true" and env["ACCELERATE_DEEPSPEED_ZERO_STAGE"] == "2"
    elif distributed_type in ("MULTI_GPU", "FSDP"):
        env = prepare_multi_gpu_env(args)
        if distributed_type == "FSDP":
            from accelerate.utils import FullyShardedDataParallelPlugin

            for key, value in env.items():
                if key.startswith("FSDP_") or key == "ACCELERATE_USE_FSDP":
                    monkeypatch.setenv(key, value)
            plugin = FullyShardedDataParallelPlugin()  # parses and checks the FSDP_* values
            assert plugin.fsdp_version == 2 and plugin.transformer_cls_names_to_wrap == ["GPT2Block"]
            # The class named for wrapping must exist in the backbone.
            from transformers.models.gpt2 import modeling_gpt2

            assert hasattr(modeling_gpt2, "GPT2Block")
    if name == "multi_node.yaml":
        assert args.main_process_port == 29500 and args.machine_rank == 0


@pytest.mark.slow
@needs_gloo
def test_evaluate_and_predict_on_two_processes_count_every_example_once(runs, tmp_path):
    """101 dev examples (odd): Accelerate pads the last batch; each example is scored and written once."""
    (two,) = _run_dirs(runs["two"])
    trained = json.loads((two / "metrics.json").read_text())
    common = [*COMMON, f"model.name_or_path={two / 'model'}"]
    _launch([*common, "mode=evaluate", f"hydra.run.dir={tmp_path / 'evaluate'}"], tmp_path, processes=2)
    _launch([*common, "mode=predict", "task.predict_split=validation", f"hydra.run.dir={tmp_path / 'predict'}"],
            tmp_path, processes=2)
    evaluated = json.loads((tmp_path / "evaluate" / "metrics.json").read_text())
    assert evaluated["environment"]["num_processes"] == 2
    assert evaluated["eval"] == trained["eval"]  # the exported best model scores as it did in training
    rows = (tmp_path / "predict" / "predictions" / "validation.tsv").read_text().splitlines()
    assert len(rows) == 1 + DEV_SIZE
    assert sorted(int(line.split("\t")[0]) for line in rows[1:]) == list(range(DEV_SIZE))
    predicted = json.loads((tmp_path / "predict" / "metrics.json").read_text())
    assert predicted["eval"] == trained["eval"]
    assert len(list((tmp_path / "predict").rglob("*.log"))) == 1


# ------------------------------------------------------------------------------ LoRA under DDP


@pytest.mark.slow
@needs_gloo
def test_two_processes_with_lora_and_activation_checkpointing_match_one_process(tmp_path):
    """LoRA (adapters + head trainable, the rest frozen: DDP reduces only those) with activation
    checkpointing on 2 processes x batch 8, against LoRA without checkpointing on 1 process x batch 16
    (in this process). Same tolerances as above."""
    from test_bad_inputs import train_in_process

    lora = ["peft=lora", "peft.dropout=0", "peft.target_modules=[c_attn,c_proj]"]
    _launch([*COMMON, *lora, "model.activation_checkpointing=true", "trainer.batch_size=8", f"hydra.run.dir={tmp_path / 'two'}"],
            tmp_path, processes=2)
    one = train_in_process([*COMMON, *lora, "trainer.batch_size=16", "trainer.tracker=null"], tmp_path / "one")
    assert one.code in (0, None), one.stderr[-3000:]
    m2, m1 = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("two", "one"))
    assert m2["train"]["trainable_parameters"] == m1["train"]["trainable_parameters"] < m1["train"]["total_parameters"] / 10
    assert [r["step"] for r in m2["history"]] == [r["step"] for r in m1["history"]] == [3, 6]
    for r2, r1 in zip(m2["history"], m1["history"]):
        assert r2["eval_validation"]["num_examples"] == DEV_SIZE
        assert r2["eval_validation"]["accuracy"] == pytest.approx(r1["eval_validation"]["accuracy"], abs=1 / DEV_SIZE + 1e-9)
    two_weights, one_weights = _weights(tmp_path / "two", 6), _weights(tmp_path / "one", 6)
    _assert_close_weights(two_weights, one_weights)
    adapter = [k for k in one_weights if "lora_B" in k]
    assert adapter and all(one_weights[k].abs().sum() > 0 for k in adapter)  # the adapters trained
