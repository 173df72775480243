"""What a mode hands back to finetune.run: its context, metrics.json content and summary lines."""

from __future__ import annotations

from dataclasses import dataclass, field

from finetune.setup import RunContext


@dataclass
class Outcome:
    ctx: RunContext
    metrics: dict  # metrics.json, without the environment section finetune.run adds
    summary: list[str] = field(default_factory=list)  # printed at the end, after "outputs in <run dir>"


def split_lines(results: dict) -> list[str]:
    """One summary line per evaluated split: its metrics and how many examples were scored."""
    return [f"{split}: " + ", ".join(f"{k}={v:.4f}" for k, v in result.items() if k != "num_examples")
            + f" ({result['num_examples']} examples)" for split, result in results.items()]
