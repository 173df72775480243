"""Many jobs in one process (`python train.py -m ...`): clean state between jobs, failures on record.

* `end_job()` runs after every job, failed or not: it resets Accelerate's singletons (a second
  `Accelerator` in the same process otherwise inherits the first one's state, and a different
  mixed precision raises) and frees memory. The process group of a multi-process launch is kept:
  it belongs to the launch, not to the job.
* `record_failure()` writes `failure.json` into a failed job's directory; `finetune.report` lists
  such jobs (and jobs with no metrics.json) separately.
* `SweepSummary` is a Hydra callback (configs/hydra/default.yaml): after the sweep it logs one
  line per job and writes report.md / report.csv / report.png into the sweep directory. It reads
  the job directories, so it works the same with the basic, joblib and submitit launchers.
"""

from __future__ import annotations

import gc
import json
import logging
import traceback
from pathlib import Path

from hydra.experimental.callback import Callback

from finetune.distributed import is_main_process

log = logging.getLogger("finetune.sweep")

FAILURE_FILE = "failure.json"

_failed_jobs: list[str] = []  # filled by SweepSummary at the end of a sweep (train.py exits 1 if any)


def failed_jobs() -> list[str]:
    return list(_failed_jobs)


def reset_accelerate_state() -> None:
    import torch.distributed as dist
    from accelerate.state import AcceleratorState, GradientState

    distributed = dist.is_available() and dist.is_initialized()
    # PartialState holds the process group of a multi-process launch: keep it then; otherwise reset
    # everything so that the next job's Accelerator is built from scratch (cpu flag, device, ...).
    AcceleratorState._reset_state(reset_partial_state=not distributed)
    GradientState._reset_state()


def release_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def end_job() -> None:
    """After each job (success or failure): forget Accelerate's state and give memory back."""
    try:
        reset_accelerate_state()
    finally:
        release_memory()


def record_failure(output_dir, err: BaseException, overrides=None) -> Path | None:
    """Write failure.json (error type, message, traceback, overrides) into the job's directory."""
    if not is_main_process() or not output_dir:
        return None
    path = Path(output_dir) / FAILURE_FILE
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({
            "error_type": type(err).__name__,
            "message": str(err),
            "overrides": list(overrides or []),
            "traceback": "".join(traceback.format_exception(type(err), err, err.__traceback__)),
        }, indent=2) + "\n")
    except OSError as write_err:
        log.warning("could not write %s: %s", path, write_err)
        return None
    return path


class SweepSummary(Callback):
    """After a multirun: log every job's outcome and write the sweep report."""

    def __init__(self, report: bool = True):
        self.report = report

    def on_multirun_end(self, config, **kwargs) -> None:
        if not is_main_process():
            return
        from finetune import report

        sweep_dir = Path(str(config.hydra.sweep.dir))
        try:
            jobs = report.collect(sweep_dir)
        except Exception as err:  # a summary must never turn a finished sweep into a crash
            log.warning("sweep summary: could not read %s: %s", sweep_dir, err)
            return
        failed = [job for job in jobs if not job.ok]
        _failed_jobs[:] = [job.name for job in failed]
        common = report.common_overrides(jobs)
        log.info("sweep %s: %d jobs; common overrides: %s", sweep_dir, len(jobs), " ".join(common) or "none")
        for job in jobs:
            value = job.metrics.get(job.main_metric) if job.ok else None
            outcome = f"{job.main_metric}={value:.4f}" if value is not None else f"FAILED: {job.error}"
            own = [o for o in job.overrides if o not in common]
            log.info("job %s [%s]: %s", job.name, " ".join(own), outcome)
        if failed:
            log.error("%d of %d jobs failed: %s (details: failure.json / the job's log in each directory)",
                      len(failed), len(jobs), ", ".join(job.name for job in failed))
        else:
            log.info("all %d jobs succeeded", len(jobs))
        if self.report and any(job.ok for job in jobs):
            try:
                written = report.write_report(sweep_dir, jobs)
                log.info("sweep report: %s", ", ".join(str(p) for p in written))
            except Exception as err:
                log.warning("sweep report could not be written: %s", err)
