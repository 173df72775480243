"""Crash-safe checkpoints on top of `accelerator.save_state`.

A checkpoint is written to a hidden temporary directory and renamed into place when complete,
so `checkpoints/step-N` either exists whole or not at all. Old checkpoints are pruned only after
the new one is in place, and the best one is never pruned.

The loop's own state (LR scheduler, progress) is stored as JSON in `trainer_state.json`, not with
`register_for_checkpointing`: Accelerate unpickles those objects with `weights_only=False`, so a
checkpoint from someone else could run code on resume. Everything else Accelerate loads with
`weights_only=True`.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

from finetune.errors import CheckpointError

log = logging.getLogger(__name__)

STEP_DIR = re.compile(r"^step-(\d+)$")
RUN_INFO = "finetune_checkpoint.json"  # written last inside the temporary directory
TRAINER_STATE = "trainer_state.json"  # name -> state_dict of the objects passed as `state`


def step_dirs(checkpoint_root: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not checkpoint_root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in checkpoint_root.iterdir() if (m := STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def save(accelerator, checkpoint_root: Path, step: int, info: dict, keep: int, protect: set[int], state: dict,
         write_model_files=None) -> Path:
    """Save the full training state for `step`; prune all but the last `keep` (and protected) ones.

    `state`: name -> object with JSON-serialisable `state_dict()` (identical on every process).
    `write_model_files(dir)` adds what makes the checkpoint a loadable model by itself (backbone
    config, tokenizer, manifest: `mode=evaluate model.name_or_path=<checkpoint>`).
    """
    final = checkpoint_root / f"step-{step}"
    temporary = checkpoint_root / f".tmp-step-{step}"
    if accelerator.is_main_process:
        checkpoint_root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(temporary, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(temporary))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (temporary / TRAINER_STATE).write_text(json.dumps({name: obj.state_dict() for name, obj in state.items()}))
        if write_model_files is not None:
            write_model_files(temporary)
        (temporary / RUN_INFO).write_text(json.dumps({"step": step, **info}, indent=2))
        if final.exists():
            shutil.rmtree(final)
        temporary.rename(final)
        for old in step_dirs(checkpoint_root)[:-keep]:
            if int(STEP_DIR.match(old.name).group(1)) not in protect:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def read_info(checkpoint: Path) -> dict:
    try:
        return json.loads((checkpoint / RUN_INFO).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"checkpoint '{checkpoint}' is incomplete or corrupt (no readable {RUN_INFO})") from err


def resolve_resume(resume: str, checkpoint_root: Path) -> list[Path]:
    """Candidate checkpoints to resume from, in order of preference."""
    if resume == "latest":
        if checkpoint_root.is_dir():
            for leftover in sorted(checkpoint_root.glob(".tmp-step-*")):
                log.warning("ignoring %s (incomplete: interrupted while saving)", leftover)
        candidates = list(reversed(step_dirs(checkpoint_root)))
        if not candidates:
            raise CheckpointError(f"trainer.resume=latest: no checkpoint found in '{checkpoint_root}'")
        return candidates
    path = Path(resume).expanduser()
    if not path.is_dir():
        raise CheckpointError(f"trainer.resume='{resume}' is not a checkpoint directory")
    return [path]


def load_state(accelerator, checkpoint: Path, state: dict) -> None:
    """Accelerate's state (model, optimizer, RNG) and ours (`state`, as saved by `save`)."""
    saved = json.loads((checkpoint / TRAINER_STATE).read_text())
    missing = [name for name in state if name not in saved]
    if missing:
        raise CheckpointError(f"checkpoint '{checkpoint}' has no {', '.join(missing)} state in {TRAINER_STATE}")
    accelerator.load_state(str(checkpoint))
    for name, obj in state.items():
        obj.load_state_dict(saved[name])


def load_latest_valid(accelerator, candidates: list[Path], expected: dict, state: dict) -> dict:
    """Load the first candidate that is complete and belongs to this task; skip broken ones."""
    errors = []
    for checkpoint in candidates:
        try:
            info = read_info(checkpoint)
            for key, value in expected.items():
                if info.get(key, value) != value:  # (a key that older checkpoints lack is not checked)
                    raise CheckpointError(
                        f"checkpoint '{checkpoint}' was written for {key}={info.get(key)!r}, this run has {key}={value!r}"
                    )
            load_state(accelerator, checkpoint, state)
            return info
        except CheckpointError as err:
            if len(candidates) == 1 or "was written for" in str(err):
                raise
            log.warning("skipping %s", err)
            errors.append(str(err))
        except Exception as err:  # a truncated file fails deep inside torch/safetensors
            detail = next((line.strip() for line in str(err).splitlines() if line.strip()), "")
            message = f"checkpoint '{checkpoint}' could not be loaded ({type(err).__name__}{': ' + detail if detail else ''})"
            if len(candidates) == 1:
                raise CheckpointError(
                    f"{message}: it is corrupt or incomplete; resume from another one (trainer.resume=<checkpoint dir>)"
                ) from err
            log.warning("skipping %s", message)
            errors.append(message)
    raise CheckpointError("no loadable checkpoint: " + "; ".join(errors))
