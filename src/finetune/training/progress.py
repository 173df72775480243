"""What a training run knows about itself besides the model: its place in the data, its best
evaluation and history (`Progress`, saved with every checkpoint), what it optimises (`Objective`)
and how many steps it runs (`Schedule`)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from finetune.errors import ConfigError


@dataclass
class Progress:
    """Everything besides model/optimizer/scheduler/RNG that a resumed run must restore."""

    step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0  # per process: what skip_first_batches skips on resume
    examples_seen: int = 0
    # Position in the epoch's shuffled order over all processes, and the examples per micro-batch over
    # all processes when saved: a resume with another process count or batch size restarts there.
    examples_in_epoch: int = 0
    world_batch: int | None = None
    best_value: float | None = None
    best_step: int | None = None
    best_metrics: dict = field(default_factory=dict)
    history: list = field(default_factory=list)  # one record per evaluation
    train_log: list = field(default_factory=list)  # {step, loss, lr, ...} every trainer.log_every steps (curves.png)
    # Early stopping: evaluations since the main metric last improved by more than min_delta, and that value.
    stale_evaluations: int = 0
    early_stopping_reference: float | None = None
    stopped_early: bool = False

    def state_dict(self) -> dict:
        return dict(self.__dict__)

    def load_state_dict(self, state: dict) -> None:
        self.__dict__.update(state)


class Meter:
    """Loss terms and examples since the last log line (its speed), and examples of the whole run."""

    def __init__(self):
        self.run_examples = 0
        self.restart_window()

    def restart_window(self) -> None:
        self.running, self.steps, self.examples, self.start = {}, 0, 0, time.perf_counter()

    def add(self, terms: dict, examples: int) -> None:
        for name, value in terms.items():
            self.running[name] = self.running.get(name, 0) + value
        self.steps += 1
        self.examples += examples
        self.run_examples += examples

    def examples_per_second(self) -> float:
        return self.examples / (time.perf_counter() - self.start)


def better(value: float, reference: float | None, mode: str, margin: float = 0.0) -> bool:
    """Is `value` better than `reference` by more than `margin`, in the direction of `mode` (max|min)?"""
    if reference is None:
        return True
    return value > reference + margin if mode == "max" else value < reference - margin


@dataclass(frozen=True)
class Objective:
    """What the evaluations score and which way is better (task.metrics, main_metric, its mode)."""

    metrics: tuple
    main_metric: str
    mode: str  # max | min


@dataclass(frozen=True)
class Schedule:
    """Optimizer steps per epoch, in all, and the epochs they span, for a loader of `batches` micro-batches."""

    steps_per_epoch: int
    total_steps: int
    epochs: int

    @classmethod
    def of(cls, settings, batches: int) -> "Schedule":
        steps_per_epoch = math.ceil(batches / settings.grad_accum)
        total = settings.max_steps or settings.epochs * steps_per_epoch
        schedule = cls(steps_per_epoch, total, math.ceil(total / steps_per_epoch))
        schedule.check_early_stopping(settings)
        return schedule

    def check_early_stopping(self, settings) -> None:
        """Early stopping needs evaluations before the last step; said before training, once the
        epoch's length is known (the data-dependent part of train's config check)."""
        patience = settings.early_stopping.patience
        if patience is None:
            return
        every = settings.eval_every or self.steps_per_epoch
        if every >= self.total_steps:
            where = (f"trainer.eval_every={settings.eval_every}" if settings.eval_every
                     else f"each epoch ({self.steps_per_epoch} steps)")
            raise ConfigError(
                f"trainer.early_stopping.patience={patience} needs evaluations during training, but the first one "
                f"({where}) comes at or after the last step ({self.total_steps}): set trainer.eval_every below {self.total_steps}"
            )
