"""Stop cleanly when the cluster asks: SIGTERM (cloud spot machines, `scancel`) or SIGUSR1 (SLURM's
`--signal=USR1@90`, sent before the time limit).

The handler only records the signal; the loop finishes the optimizer step it is in, writes a
checkpoint (atomically, as always), and the run exits with PREEMPTED_EXIT_CODE so that a job script
can requeue it; `trainer.resume=latest` (or `auto`) then continues exactly where it stopped. More
signals while that happens are logged and ignored, so a second SIGTERM cannot interrupt the save.
"""

from __future__ import annotations

import logging
import os
import signal
import threading

import torch

from finetune.errors import FinetuneError

log = logging.getLogger(__name__)

PREEMPTED_EXIT_CODE = os.EX_TEMPFAIL if hasattr(os, "EX_TEMPFAIL") else 75  # 75: "temporary failure, try again"
SIGNALS = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGUSR1", None)) if s is not None)


class Preempted(FinetuneError):
    """Raised after the checkpoint is written; ends the run (and a sweep) with PREEMPTED_EXIT_CODE."""

    exit_code = PREEMPTED_EXIT_CODE


class PreemptionGuard:
    """Context manager: while active, SIGTERM/SIGUSR1 request a stop at the next optimizer step."""

    def __init__(self):
        self.signal_name: str | None = None
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        if self.signal_name is not None:  # stopping: keep ignoring signals until the process has exited
            return False
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()
        return False

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.signal_name is None:
            self.signal_name = name
            log.warning("%s received: finishing this optimizer step, then checkpointing and exiting", name)
        else:
            log.warning("%s received again: already stopping (the checkpoint is being written)", name)

    def requested(self, accelerator) -> bool:
        """True on every process once any process got a signal (all of them stop at the same step)."""
        local = self.signal_name is not None
        if accelerator.num_processes == 1:
            return local
        flag = torch.tensor(float(local), device=accelerator.device)
        return bool(accelerator.reduce(flag, reduction="sum").item() > 0)
