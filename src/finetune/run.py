"""One job from a composed config: validate, run its mode (finetune.modes), record how it ran.

Every mode writes the same run directory layout: config.yaml, the log, and metrics.json with an
`environment` section; this module adds that section, prints the summary, closes the trackers and
turns input errors into one line (`run_and_report`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys

from finetune.config import PROJECT_ROOT, validate
from finetune.errors import ConfigError, FinetuneError
from finetune.outputs.environment import describe
from finetune.training.preemption import Preempted

log = logging.getLogger("finetune")
for _noisy in ("accelerate.checkpointing", "accelerate.accelerator"):
    logging.getLogger(_noisy).setLevel(logging.WARNING)


def check(cfg):
    """Every config check, before any work: the schema, ranges and task (config.validate, which asks
    the head's `check_config`), then the mode's own `check`. Returns the mode."""
    from finetune.modes import MODES

    validate(cfg)
    mode = MODES.get(cfg.mode.name)
    if mode is None:
        raise ConfigError(f"mode '{cfg.mode.name}' is not a known mode; choose one of {', '.join(sorted(MODES))}")
    mode.check(cfg)
    return mode


def run(cfg) -> float:
    """Run the configured mode; return the task's main metric on the first evaluation split (NaN if none)."""
    outcome = check(cfg).run(cfg)
    ctx = outcome.ctx
    metrics = {**outcome.metrics, "environment": describe(ctx.accelerator, PROJECT_ROOT)}
    value = (metrics.get("eval") or {}).get(cfg.task.main_metric, float("nan"))
    if ctx.accelerator.is_main_process:
        (ctx.run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        headline = f"{cfg.task.name} ({cfg.mode.name})" + (f": {cfg.task.main_metric}={value:.4f}" if not math.isnan(value) else "")
        print("\n".join([f"{headline}; outputs in {ctx.run_dir}", *(f"  {line}" for line in outcome.summary)]))
    ctx.accelerator.wait_for_everyone()
    # Not accelerator.end_training(): that also destroys the process group, which belongs to the
    # launch (a -m sweep inside one `accelerate launch` reuses it); train.py ends it at exit.
    for tracker in ctx.accelerator.trackers:
        tracker.finish()
    return float(value)


def _job_failed(cfg, err: BaseException) -> float:
    """Within a sweep: log the failure, leave failure.json in the job directory, go on (NaN)."""
    from finetune.sweep import record_failure

    expected = isinstance(err, FinetuneError)
    log.error("job failed: %s%s", "" if expected else f"{type(err).__name__}: ", err, exc_info=not expected)
    try:
        from hydra.core.hydra_config import HydraConfig

        overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
        output_dir = cfg.paths.output_dir
    except Exception:  # no Hydra runtime (called from Python): still return NaN
        overrides, output_dir = [], None
    record_failure(output_dir, err, overrides)
    return float("nan")


def _one_line(err: BaseException) -> str:
    return "; ".join(line.strip() for line in str(err).splitlines() if line.strip()) or type(err).__name__


def run_and_report(cfg, multirun: bool = False):
    """Run; turn input errors into one line and exit code 2 (or a logged failure within a sweep).

    In a sweep (multirun) any exception fails only its job: it is logged, recorded in the job's
    failure.json and returned as NaN, and the sweep goes on (FINETUNE_DEBUG=1 re-raises). A
    preemption signal ends the whole process, sweep or not, with its own exit code.
    Accelerate's state is reset and memory released after every job (finetune.sweep.end_job).
    """
    try:
        return run(cfg)
    except Preempted as err:
        print(f"stopped: {_one_line(err)}", file=sys.stderr)
        sys.exit(err.exit_code)
    except FinetuneError as err:
        if os.environ.get("FINETUNE_DEBUG"):
            raise
        if multirun:
            return _job_failed(cfg, err)
        print(f"error: {_one_line(err)}", file=sys.stderr)
        sys.exit(err.exit_code)
    except Exception as err:
        if multirun and not os.environ.get("FINETUNE_DEBUG"):
            return _job_failed(cfg, err)
        raise
    finally:
        from finetune.sweep import end_job

        end_job()
