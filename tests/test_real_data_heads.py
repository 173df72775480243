"""Each head learns on real data: a short CPU run of the mini pretrained GPT-2 from ../shared/data.

One task per head family besides classification (tests/test_real_data.py): entailment (RTE),
similarity (STS-B, regression, both orders), multiple choice (Story Cloze) and extractive span QA
(SQuAD v1.1). Each must beat the trivial baseline on its dev split:

| task | trivial baseline (dev) | measured with this budget (2 CPU cores, 2026-11-23) |
|---|---|---|
| rte | majority class (entailment): 0.5271 | accuracy 0.5704 (GPT-1 itself reached only 56.0) |
| stsb | constant score: Pearson 0 | Pearson 0.1581 |
| storycloze | always the first ending: 0.5131 | accuracy 0.6857 |
| squad (first 300 dev questions) | empty answer: EM 0, F1 0 | F1 10.29 |

Runs are deterministic on CPU (same config and seed, same metrics: tests/test_checkpoints.py), so
the thresholds sit between the baseline and the measured value, with a margin for a machine whose
float summation order differs. Skipped when ../shared/data is absent.
"""

from __future__ import annotations

import json

import pytest

from conftest import MINI_MODEL, SHARED_DATA, requires_shared_data, run_train

pytestmark = [requires_shared_data, pytest.mark.slow, pytest.mark.realdata]

COMMON = [
    f"data_dir={SHARED_DATA}", f"model.name_or_path={MINI_MODEL}", "optim.lr=1e-4",
    "trainer.tracker=null", "trainer.progress_bar=false",
]

# task -> (overrides, metric, trivial baseline, threshold asserted)
CASES = {
    "rte": (["task=rte", "trainer.max_steps=150"], "accuracy", 0.5271, 0.545),
    "stsb": (["task=stsb", "trainer.max_steps=150"], "pearson", 0.0, 0.10),
    "storycloze": (["task=storycloze", "trainer.max_steps=100"], "accuracy", 0.5131, 0.60),
    "squad": (
        ["task=squad", "trainer.max_steps=60", "trainer.batch_size=16", "task.max_length=256", "task.head_args.stride=64",
         "trainer.max_eval_samples=300"],
        "f1", 0.0, 5.0,
    ),
}


@pytest.mark.parametrize("task", list(CASES))
def test_head_beats_the_trivial_baseline(task, tmp_path):
    overrides, metric, baseline, threshold = CASES[task]
    result = run_train([*overrides, *COMMON, f"hydra.run.dir={tmp_path}"], timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    value = metrics["eval"][metric]
    print(f"{task}: {metric}={value:.4f} (trivial baseline {baseline}, threshold {threshold})")
    assert value > threshold >= baseline
