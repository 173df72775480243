"""Crash-safe checkpoints on top of `accelerator.save_state`.

A checkpoint is written to a hidden temporary directory and renamed into place when complete,
so `checkpoints/step-N` either exists whole or not at all. Old checkpoints are pruned only after
the new one is in place, and the best one is never pruned.
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


def step_dirs(checkpoint_root: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not checkpoint_root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in checkpoint_root.iterdir() if (m := STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def save(accelerator, checkpoint_root: Path, step: int, info: dict, keep: int, protect: set[int]) -> Path:
    """Save the full training state for `step`; prune all but the last `keep` (and protected) ones."""
    final = checkpoint_root / f"step-{step}"
    temporary = checkpoint_root / f".tmp-step-{step}"
    if accelerator.is_main_process:
        checkpoint_root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(temporary, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(temporary))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
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
        candidates = list(reversed(step_dirs(checkpoint_root)))
        if not candidates:
            raise CheckpointError(f"trainer.resume=latest: no checkpoint found in '{checkpoint_root}'")
        return candidates
    path = Path(resume).expanduser()
    if not path.is_dir():
        raise CheckpointError(f"trainer.resume='{resume}' is not a checkpoint directory")
    return [path]


def load_latest_valid(accelerator, candidates: list[Path], expected: dict) -> dict:
    """Load the first candidate that is complete and belongs to this task; skip broken ones."""
    errors = []
    for checkpoint in candidates:
        try:
            info = read_info(checkpoint)
            for key, value in expected.items():
                if info.get(key) != value:
                    raise CheckpointError(
                        f"checkpoint '{checkpoint}' was written for {key}={info.get(key)!r}, this run has {key}={value!r}"
                    )
            accelerator.load_state(str(checkpoint))
            return info
        except CheckpointError as err:
            if len(candidates) == 1 or "was written for" in str(err):
                raise
            log.warning("skipping %s", err)
            errors.append(str(err))
        except Exception as err:  # a truncated file fails deep inside torch/safetensors
            message = f"checkpoint '{checkpoint}' could not be loaded ({type(err).__name__}: {err})"
            if len(candidates) == 1:
                raise CheckpointError(message) from err
            log.warning("skipping %s", message)
            errors.append(message)
    raise CheckpointError("no loadable checkpoint: " + "; ".join(errors))
