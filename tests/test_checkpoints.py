"""Checkpoints: kill -9 and resume to the same weights, broken checkpoints, pruning, divergence, determinism.

The kill -9 test runs `train.py` as real subprocesses; the others run it in this process (see
`train_in_process` in test_bad_inputs.py) with the tiny model on a slice of the quickstart data.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT, TINY_FAST
from finetune.training.checkpoint import RUN_INFO, STEP_DIR
from test_bad_inputs import assert_one_line_error, train_in_process

SMALL = ["experiment=quickstart", *TINY_FAST, "trainer.max_train_samples=96", "trainer.max_eval_samples=32",
         "trainer.batch_size=8", "model.dropout=0.1", "model.head_dropout=0.1", "seed=11"]
STEPS_PER_EPOCH = 12  # 96 examples / batch 8
# Measured on the machine as it is (speed; RSS depends on the allocator and what else the process did).
TIMING_KEYS = {"train_seconds", "steps_per_second", "examples_per_second", "peak_memory_mb"}


def weights(path: Path) -> dict[str, torch.Tensor]:
    # Copies: load_file's tensors may be backed by a memory map of the file, which a test may truncate.
    return {key: tensor.clone() for key, tensor in load_file(str(path)).items()}


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    different = [key for key in wa if not torch.equal(wa[key], wb[key])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def eval_view(metrics: dict) -> dict:
    """Everything in metrics.json that must not depend on timing (or on the run directory's name)."""
    view = {k: v for k, v in metrics.items() if k not in ("train", "environment")}
    view["train"] = {k: v for k, v in metrics["train"].items() if k not in TIMING_KEYS}
    return view


def step_numbers(checkpoint_root: Path) -> list[int]:
    if not checkpoint_root.is_dir():
        return []
    return sorted(int(m.group(1)) for p in checkpoint_root.iterdir() if (m := STEP_DIR.match(p.name)))


def run_ok(args: list[str], run_dir: Path) -> Path:
    result = train_in_process(args, run_dir)
    assert result.code in (0, None), result.stderr[-3000:]
    return run_dir


def log_text(run_dir: Path, result_stdout: str = "") -> str:
    log = run_dir / "train.log"
    return (log.read_text() if log.is_file() else "") + result_stdout


# ------------------------------------------------------------------------ kill -9 and resume

# 192 examples in batches of 16: 12 steps per epoch; learns enough that the best evaluation is the last one.
KILL_CFG = [*SMALL, "trainer.max_train_samples=192", "trainer.batch_size=16", "optim.lr=3e-3",
            "trainer.max_steps=40", "trainer.eval_every=5", "trainer.log_every=5"]


def _popen(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    """The uninterrupted run every interrupted one is compared with; started at once, awaited on use."""
    run_dir = tmp_path_factory.mktemp("straight")
    process = _popen([*KILL_CFG, f"hydra.run.dir={run_dir}"])

    def finished() -> Path:
        _, err = process.communicate(timeout=400)
        assert process.returncode == 0, err[-3000:]
        return run_dir

    yield finished
    if process.poll() is None:
        process.kill()


def _wait_for_checkpoint(process: subprocess.Popen, checkpoints: Path, at_least: int) -> None:
    """Poll until a checkpoint of step >= at_least exists; every step-N directory appears complete."""
    deadline = time.monotonic() + 400
    while True:
        assert process.poll() is None, f"the run ended before it could be interrupted: {process.stderr.read()[-3000:]}"
        assert time.monotonic() < deadline, "no checkpoint appeared in time"
        steps = step_numbers(checkpoints)
        for step in steps:
            directory = checkpoints / f"step-{step}"
            # A step-N directory only ever appears complete (written under .tmp-step-N, then renamed).
            if directory.is_dir() and not (directory / RUN_INFO).is_file():
                assert not directory.exists(), f"{directory} exists without {RUN_INFO}"  # (unless just pruned)
        if steps and steps[-1] >= at_least:
            return
        time.sleep(0.02)


def _assert_resumed_run_equals_the_straight_one(straight_dir: Path, resumed_dir: Path) -> None:
    assert_same_weights(straight_dir / "model" / "model.safetensors", resumed_dir / "model" / "model.safetensors")
    assert_same_weights(straight_dir / "checkpoints" / "step-40" / "model.safetensors",
                        resumed_dir / "checkpoints" / "step-40" / "model.safetensors")
    a = json.loads((straight_dir / "metrics.json").read_text())
    b = json.loads((resumed_dir / "metrics.json").read_text())
    # The best step may come before or after the stop (the stop step is random): either way the export
    # must be the straight run's; the step-40 weights above show the steps after the resume are exact.
    assert a["eval"] == b["eval"] and a["best_step"] == b["best_step"]
    assert [h["step"] for h in a["history"]] == [5, 10, 15, 20, 25, 30, 35, 40] == [h["step"] for h in b["history"]]
    assert a["history"] == b["history"]
    assert a["train"]["steps"] == b["train"]["steps"] == 40
    assert a["train"]["examples_seen"] == b["train"]["examples_seen"]


def test_kill_9_mid_epoch_then_resume_latest_gives_the_uninterrupted_weights_and_metrics(tmp_path, straight_run):
    killed_dir = tmp_path / "killed"
    killed = _popen([*KILL_CFG, f"hydra.run.dir={killed_dir}"])
    checkpoints = killed_dir / "checkpoints"
    try:
        _wait_for_checkpoint(killed, checkpoints, at_least=15)  # past the first epoch (12 steps), mid second
        os.kill(killed.pid, signal.SIGKILL)
        killed.wait(timeout=60)
    finally:
        if killed.poll() is None:
            killed.kill()
    assert killed.returncode == -signal.SIGKILL
    assert not (killed_dir / "metrics.json").exists()
    latest = step_numbers(checkpoints)[-1]
    assert latest % STEPS_PER_EPOCH != 0, f"killed at step {latest}, an epoch boundary: not a mid-epoch resume"

    resumed = _popen([*KILL_CFG, f"hydra.run.dir={killed_dir}", "trainer.resume=latest"])
    _, resumed_err = resumed.communicate(timeout=400)
    assert resumed.returncode == 0, resumed_err[-3000:]
    epoch, batch = divmod(latest, STEPS_PER_EPOCH)
    assert f"resumed from step {latest} (epoch {epoch}, batch {batch} of the epoch)" in log_text(killed_dir)
    _assert_resumed_run_equals_the_straight_one(straight_run(), killed_dir)


def test_sigterm_twice_at_a_random_step_checkpoints_that_step_then_resumes_bitwise(tmp_path, straight_run):
    """SLURM/spot preemption: SIGTERM at a random moment after step 5, and again as soon as the run says
    it is stopping (while it finishes the step and writes the checkpoint); the run checkpoints that
    step and exits 75; resume=latest then ends exactly like the straight run."""
    import random

    stopped_dir = tmp_path / "stopped"
    stopped = _popen([*KILL_CFG, f"hydra.run.dir={stopped_dir}"])
    delay = random.Random().uniform(0.0, 0.15)
    try:
        _wait_for_checkpoint(stopped, stopped_dir / "checkpoints", at_least=5)
        time.sleep(delay)
        os.kill(stopped.pid, signal.SIGTERM)
        deadline = time.monotonic() + 60
        while "SIGTERM received:" not in log_text(stopped_dir) and time.monotonic() < deadline:
            time.sleep(0.002)
        os.kill(stopped.pid, signal.SIGTERM)  # signals are not queued: this one comes after the first was handled
        _, err = stopped.communicate(timeout=120)
    finally:
        if stopped.poll() is None:
            stopped.kill()
    assert stopped.returncode == 75, (delay, err[-3000:])
    message = [line for line in err.splitlines() if line.startswith("stopped: ")]
    assert len(message) == 1 and "stopped by SIGTERM after step" in message[0] and "trainer.resume=latest" in message[0], err[-3000:]
    stopped_at = int(re.search(r"after step (\d+) of 40", message[0]).group(1))
    assert step_numbers(stopped_dir / "checkpoints")[-1] == stopped_at < 40
    assert "SIGTERM received again: already stopping" in log_text(stopped_dir)
    assert not (stopped_dir / "metrics.json").exists() and not list((stopped_dir / "checkpoints").glob(".tmp-*"))

    resumed = _popen([*KILL_CFG, f"hydra.run.dir={stopped_dir}", "trainer.resume=latest"])
    _, resumed_err = resumed.communicate(timeout=400)
    assert resumed.returncode == 0, resumed_err[-3000:]
    assert f"resumed from step {stopped_at} " in log_text(stopped_dir)
    _assert_resumed_run_equals_the_straight_one(straight_run(), stopped_dir)


# ------------------------------------------------------------------- broken newest checkpoint


def test_corrupt_newest_checkpoint_and_leftover_tmp_dir_are_skipped_on_resume_latest(tmp_path):
    args = [*SMALL, "trainer.max_steps=12", "trainer.eval_every=4", "trainer.log_every=4", "trainer.save_total_limit=5"]
    run_dir = run_ok(args, tmp_path / "run")
    checkpoints = run_dir / "checkpoints"
    assert step_numbers(checkpoints) == [4, 8, 12]
    good_final = weights(checkpoints / "step-12" / "model.safetensors")
    # The newest checkpoint is corrupt (a truncated weight file), and a save of step 16 was interrupted.
    newest = checkpoints / "step-12" / "model.safetensors"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    (checkpoints / ".tmp-step-16").mkdir()
    (checkpoints / ".tmp-step-16" / "model.safetensors").write_bytes(b"partial")
    (run_dir / "train.log").unlink()

    result = train_in_process([*args, "trainer.resume=latest"], run_dir)
    assert result.code in (0, None), result.stderr[-3000:]
    log = log_text(run_dir, result.stdout)
    assert re.search(r"ignoring .*\.tmp-step-16.* \(incomplete: interrupted while saving\)", log), log[-3000:]
    assert re.search(r"skipping checkpoint '.*step-12' could not be loaded \(SafetensorError", log), log[-3000:]
    assert "resumed from step 8 (epoch 0, batch 8 of the epoch)" in log
    # Steps 9-12 were trained again from step 8: the rewritten step-12 is the one that was lost.
    again = weights(checkpoints / "step-12" / "model.safetensors")
    assert all(torch.equal(good_final[k], again[k]) for k in good_final)


def test_resume_from_an_explicit_corrupt_checkpoint_is_a_one_line_error(tmp_path):
    args = [*SMALL, "trainer.max_steps=4", "trainer.eval_every=4"]
    run_dir = run_ok(args, tmp_path / "run")
    checkpoint = run_dir / "checkpoints" / "step-4"
    (checkpoint / "optimizer.bin").write_bytes(b"")
    result = train_in_process([*args, f"trainer.resume={checkpoint}"], tmp_path / "again")
    assert_one_line_error(result, f"checkpoint '{checkpoint}' could not be loaded (", "corrupt or incomplete",
                          "trainer.resume=<checkpoint dir>")


# ------------------------------------------------------------------ pruning keeps the best one


def test_pruning_keeps_the_last_k_and_never_the_best_and_dirs_appear_only_complete(tmp_path, monkeypatch):
    from finetune.training import checkpoint, loop

    accuracies = iter([0.1, 0.5, 0.9, 0.2, 0.3, 0.4])  # evaluations at steps 2, 4, ..., 12: best at step 6

    def fake_evaluate_split(accelerator, model, loader, metrics, features, examples):
        value = next(accuracies)
        return {"accuracy": value, "f1": value, "num_examples": len(features)}

    listings = []
    real_save = checkpoint.save

    def save(accelerator, root, step, info, keep, protect, state, **kwargs):
        path = real_save(accelerator, root, step, info, keep, protect, state, **kwargs)
        listings.append((step, step_numbers(root), sorted(p.name for p in root.iterdir() if p.name.startswith(".tmp"))))
        for directory in root.iterdir():
            if STEP_DIR.match(directory.name):
                assert (directory / RUN_INFO).is_file() and (directory / "model.safetensors").is_file()
        return path

    monkeypatch.setattr(loop, "evaluate_split", fake_evaluate_split)
    monkeypatch.setattr(checkpoint, "save", save)
    run_dir = run_ok([*SMALL, "trainer.max_steps=12", "trainer.eval_every=2", "trainer.log_every=2",
                      "trainer.save_total_limit=1"], tmp_path / "run")
    best_so_far = {2: 2, 4: 4, 6: 6, 8: 6, 10: 6, 12: 6}
    assert [step for step, _, _ in listings] == [2, 4, 6, 8, 10, 12]
    for step, kept, leftovers in listings:
        assert leftovers == []
        assert step in kept and best_so_far[step] in kept, (step, kept)
        assert set(kept) <= {step, best_so_far[step]}, (step, kept)  # keep=1 plus the best
    assert step_numbers(run_dir / "checkpoints") == [6, 12]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["best_step"] == 6 and metrics["eval"]["accuracy"] == 0.9
    # The exported model is the best checkpoint's.
    exported = weights(run_dir / "model" / "model.safetensors")
    best = weights(run_dir / "checkpoints" / "step-6" / "model.safetensors")
    wte = next(k for k in best if k.endswith("wte.weight"))
    assert torch.equal(exported["transformer.wte.weight"], best[wte])


def test_a_crash_while_saving_leaves_no_step_dir(tmp_path, monkeypatch):
    from accelerate import Accelerator

    real_save_state = Accelerator.save_state

    def save_state(self, output_dir=None, **kwargs):
        if output_dir and output_dir.endswith("step-4"):
            Path(output_dir).mkdir(parents=True, exist_ok=True)
            (Path(output_dir) / "model.safetensors").write_bytes(b"half of a file")
            raise KeyboardInterrupt  # the process dies in the middle of writing step 4
        return real_save_state(self, output_dir, **kwargs)

    monkeypatch.setattr(Accelerator, "save_state", save_state)
    result = train_in_process([*SMALL, "trainer.max_steps=6", "trainer.eval_every=2", "trainer.log_every=2"], tmp_path / "run")
    assert result.code not in (0, None)
    checkpoints = tmp_path / "run" / "checkpoints"
    assert step_numbers(checkpoints) == [2]
    assert (checkpoints / ".tmp-step-4").is_dir()
    assert (checkpoints / "step-2" / RUN_INFO).is_file()


# -------------------------------------------------------------------------- non-finite loss


def test_non_finite_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    from finetune.models import task_model
    from finetune.training import loop

    real_forward, real_step = task_model.TaskModel.forward, loop.Trainer._train_step
    calls = {"train": 0, "in_step": False}

    def forward(self, labels=None, **batch):
        out = real_forward(self, labels=labels, **batch)
        if calls["in_step"]:  # forwards of training steps (not the memory estimate's probe before training)
            calls["train"] += 1
            if calls["train"] >= 8:  # from step 8 on, the loss is NaN
                out["loss"] = out["loss"] * float("nan")
        return out

    def train_step(self, window):
        calls["in_step"] = True
        try:
            return real_step(self, window)
        finally:
            calls["in_step"] = False

    monkeypatch.setattr(task_model.TaskModel, "forward", forward)
    monkeypatch.setattr(loop.Trainer, "_train_step", train_step)
    run_dir = tmp_path / "run"
    result = train_in_process([*SMALL, "trainer.max_steps=12", "trainer.eval_every=3", "trainer.log_every=1"], run_dir)
    last_good = run_dir / "checkpoints" / "step-6"
    assert_one_line_error(result, "training loss became nan at step 8; stopped", f"Last good checkpoint: {last_good}",
                          "lower optim.lr", before_training=False)
    assert step_numbers(run_dir / "checkpoints")[-1] == 6
    assert (last_good / RUN_INFO).is_file()
    assert all(torch.isfinite(t).all() for t in weights(last_good / "model.safetensors").values())
    assert not (run_dir / "metrics.json").exists()


def test_a_huge_learning_rate_diverges_with_a_one_line_error(tmp_path):
    result = train_in_process([*SMALL, "trainer.max_steps=6", "trainer.log_every=1", "optim.lr=1e10",
                               "optim.max_grad_norm=1e10", "optim.warmup_ratio=0"], tmp_path / "run")
    message = assert_one_line_error(result, "stopped", "lower optim.lr", before_training=False)
    assert re.search(r"(became nan|became inf|non-finite).* (at|by|between) step \d", message), message


# ---------------------------------------------------------------------------- determinism


def test_same_config_and_seed_give_identical_metrics_and_weights(tmp_path):
    args = [*SMALL, "trainer.max_steps=8", "trainer.eval_every=4", "trainer.log_every=4"]
    a = run_ok(args, tmp_path / "a")
    b = run_ok(args, tmp_path / "b")
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
    assert eval_view(ma) == eval_view(mb)
    assert all(math.isfinite(v) for v in ma["train"].values() if isinstance(v, float))
    assert_same_weights(a / "model" / "model.safetensors", b / "model" / "model.safetensors")


# --------------------------------------------------------------------------------- safety

SRC = ROOT / "src" / "finetune"


def _sources() -> dict[Path, str]:
    return {path: path.read_text() for path in SRC.rglob("*.py")}


def test_every_torch_load_in_src_passes_weights_only_true():
    for path, text in _sources().items():
        for match in re.finditer(r"torch\.load\(", text):
            depth, end = 0, match.end() - 1
            for end in range(match.end() - 1, len(text)):  # the call's full argument list
                depth += {"(": 1, ")": -1}.get(text[end], 0)
                if depth == 0:
                    break
            call = text[match.start(): end + 1]
            assert re.search(r"weights_only\s*=\s*True", call), f"{path}: {call}"


def test_trust_remote_code_is_off_by_default():
    from conftest import compose_config
    from finetune.config import ModelConfig

    assert ModelConfig().trust_remote_code is False
    for model in ("gpt2", "tiny", "gpt2-xl"):
        assert compose_config([f"model={model}"]).model.trust_remote_code is False
    for path, text in _sources().items():
        assert not re.search(r"trust_remote_code\s*=\s*True", text), path


def test_src_runs_no_shell_or_subprocess():
    pattern = re.compile(r"\bimport subprocess\b|\bfrom subprocess\b|\bsubprocess\.|os\.system\(|os\.popen\(|shell\s*=\s*True|os\.exec\w*\(|os\.spawn\w*\(")
    offenders = [f"{path}: {m.group(0)}" for path, text in _sources().items() for m in pattern.finditer(text)]
    assert not offenders, offenders


def test_resume_auto_starts_fresh_without_a_checkpoint_and_resumes_with_one(tmp_path):
    run_dir = tmp_path / "run"
    first = train_in_process([*SMALL, "trainer.max_steps=4", "trainer.eval_every=4", "trainer.resume=auto"], run_dir)
    assert first.code in (0, None), first.stderr[-3000:]
    assert "trainer.resume=auto: no checkpoint" in log_text(run_dir, first.stdout)
    again = train_in_process([*SMALL, "trainer.max_steps=6", "trainer.eval_every=2", "trainer.resume=auto"], run_dir)
    assert again.code in (0, None), again.stderr[-3000:]
    assert "resumed from step 4 " in log_text(run_dir, again.stdout)
    assert json.loads((run_dir / "metrics.json").read_text())["train"]["steps"] == 6
