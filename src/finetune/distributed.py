"""Several processes, one run: agree on the run directory before Hydra composes, main rank writes.

Under `accelerate launch` (or torchrun, or a multi-node launch) every rank runs `train.py` and so
every rank runs Hydra. Hydra's `${now:...}` would give each rank its own timestamp (ranks start
a second or more apart, nodes even more), hence its own run directory. Instead:

* `train.py` calls `agree_on_launch_time()` before Hydra starts. When the launcher says there
  are several processes (WORLD_SIZE > 1), it initialises Accelerate's process group right away
  (the same `PartialState` the `Accelerator` later reuses, so the backend is the one Accelerate
  would pick: nccl on GPUs, gloo with ACCELERATE_USE_CPU=1, DeepSpeed's own init under DeepSpeed)
  and broadcasts global rank 0's clock to all ranks, on every node.
* The Hydra config uses `${ft.now:...}` instead of `${now:...}`: the agreed time in a distributed
  launch, otherwise exactly Hydra's `now` (cached per config, so a sweep keeps one directory).
* `${ft.main_process:a,b}` is `a` on the main process (global rank 0) and `b` (default null) on
  the others: `configs/hydra/default.yaml` uses it to give non-main ranks no `.hydra/` output
  subdir and no log file, and to keep their console to warnings.

The process group then lives as long as the launch (a `-m` sweep inside one launch reuses it);
`shutdown()` destroys it at exit.
"""

from __future__ import annotations

import datetime
import os

from omegaconf import OmegaConf

# Environment variables that carry the global rank / world size, in the order Accelerate reads them
# (torchrun and `accelerate launch` set RANK/WORLD_SIZE; MPI launchers set the others).
RANK_VARS = ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")
WORLD_SIZE_VARS = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")

_agreed_time: datetime.datetime | None = None


def _env_int(names, default: int) -> int:
    for name in names:
        value = os.environ.get(name)
        if value not in (None, ""):
            try:
                return int(value)
            except ValueError:
                pass
    return default


def launch_rank() -> int:
    """Global rank as set by the launcher (0 when not launched distributed)."""
    return _env_int(RANK_VARS, 0)


def launch_world_size() -> int:
    return _env_int(WORLD_SIZE_VARS, 1)


def is_main_process() -> bool:
    """True on global rank 0 (and in a plain single-process run). Usable before Accelerate starts."""
    return launch_rank() == 0


def agree_on_launch_time() -> datetime.datetime | None:
    """In a multi-process launch: start the process group and adopt rank 0's clock on every rank.

    Returns the agreed time, or None in a single-process run (then `${ft.now:}` is Hydra's `now`).
    Idempotent. Must be called by every rank at the same point (it is a collective operation).
    """
    global _agreed_time
    if _agreed_time is not None or launch_world_size() <= 1:
        return _agreed_time
    import torch
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list, parse_flag_from_env

    # Same CPU decision as finetune.setup.make_accelerator (and AcceleratorState): a later
    # Accelerator(cpu=...) must find the state it expects.
    cpu = parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available()
    state = PartialState(cpu=cpu)
    if state.num_processes > 1:
        payload = [datetime.datetime.now() if state.is_main_process else None]
        broadcast_object_list(payload, from_process=0)
        _agreed_time = payload[0]
    else:
        _agreed_time = datetime.datetime.now()
    return _agreed_time


def shutdown() -> None:
    """Destroy the default process group if one is up (end of a launch, after every job)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _now(pattern: str) -> str:
    return (_agreed_time or datetime.datetime.now()).strftime(pattern)


def _main_process(on_main=None, on_others=None):
    return on_main if is_main_process() else on_others


def _optimization_direction(metric_mode: str | None, main_metric: str = "", metrics=()) -> str:
    """Optuna's direction for task.main_metric_mode (max -> maximize, min -> minimize); null: the
    direction the main metric's module declares (finetune.metrics)."""
    if metric_mode is None:
        from finetune.metrics import higher_is_better

        metric_mode = "max" if higher_is_better(list(metrics), main_metric) else "min"
    return {"max": "maximize", "min": "minimize"}[metric_mode]


def register_resolvers() -> None:
    # use_cache like Hydra's `now`: Hydra copies the cache from the sweep config into every job's
    # config, which is what keeps one sweep directory for all jobs.
    OmegaConf.register_new_resolver("ft.now", _now, use_cache=True, replace=True)
    OmegaConf.register_new_resolver("ft.main_process", _main_process, replace=True)
    OmegaConf.register_new_resolver("ft.direction", _optimization_direction, replace=True)
