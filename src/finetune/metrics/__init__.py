"""Local `evaluate` metric modules, loaded by path so that no run needs the Hub.

Each metric lives in a directory whose script has the directory's name, which is the layout
`evaluate.load(<dir>)` accepts. Output keys match the Hub's `glue` / `squad` metrics. Each module's
Metric class declares, as class attributes, what the rest of the framework asks of it:
- `keys`: what `_compute` reports (a task's `main_metric` is checked against them before training);
- `inputs`: the kinds of evaluator output it can read, so a task cannot pair it with a head whose
  evaluator produces none of them: `labels` (predicted and gold class ids or scores), `next_tokens`
  (a language model's predicted and target token ids), `answers` (answer strings against lists of
  gold strings), `tokens` (summed NLL and token counts per block);
- `higher_is_better`: its direction (True, False, or a dict per key), from which
  `task.main_metric_mode` defaults.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

METRICS_DIR = Path(__file__).parent
AVAILABLE = sorted(p.name for p in METRICS_DIR.iterdir() if (p / f"{p.name}.py").is_file())


@dataclass(frozen=True)
class MetricSpec:
    name: str
    keys: tuple
    inputs: tuple
    higher_is_better: dict  # key -> bool

    def reads(self, produced: tuple) -> str | None:
        """The first of its input kinds that an evaluator producing `produced` gives it (None: none)."""
        return next((kind for kind in self.inputs if kind in produced), None)


@lru_cache(maxsize=None)
def metric_spec(name: str) -> MetricSpec:
    """What the metric module `name` declares (its Metric class's attributes), without loading it through evaluate."""
    import evaluate

    if name not in AVAILABLE:
        raise ValueError(f"unknown metric '{name}'; available: {', '.join(AVAILABLE)}")
    module = importlib.import_module(f"finetune.metrics.{name}.{name}")
    metric = next(value for value in vars(module).values()
                  if isinstance(value, type) and issubclass(value, evaluate.Metric) and value is not evaluate.Metric)
    keys = tuple(metric.keys)
    direction = metric.higher_is_better
    per_key = dict(direction) if isinstance(direction, dict) else {key: bool(direction) for key in keys}
    return MetricSpec(name, keys, tuple(metric.inputs), per_key)


def higher_is_better(metric_names, key: str) -> bool:
    """The direction of `key` as the first of `metric_names` that reports it declares."""
    for name in metric_names:
        spec = metric_spec(name)
        if key in spec.keys:
            return spec.higher_is_better[key]
    raise ValueError(f"no metric of {list(metric_names)} reports '{key}'")


def main_metric_mode(task) -> str:
    """`task.main_metric_mode` when set, else what the main metric declares (max or min)."""
    if task.main_metric_mode is not None:
        return task.main_metric_mode
    return "max" if higher_is_better(task.metrics, task.main_metric) else "min"


def load_metric(name: str, **kwargs):
    """Load one of our metric modules by name from its directory (works offline)."""
    import evaluate

    if name not in AVAILABLE:
        raise ValueError(f"unknown metric '{name}'; available: {', '.join(AVAILABLE)}")
    return evaluate.load(str(METRICS_DIR / name), **kwargs)
