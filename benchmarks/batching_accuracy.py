#!/usr/bin/env python
"""Does a batching mode keep accuracy? Dev accuracy over seeds, at equal optimizer steps.

Trains the mini pretrained GPT-2 (../shared/data/models/gpt2-mini-pretrained) with `train.py`, one run
at a time, for every (task, batching mode, seed), with the budgets of tests/test_real_data*.py:

  sst2        300 steps, lr 5e-5 (the default)   classification
  rte         150 steps, lr 1e-4                 entailment
  storycloze  100 steps, lr 1e-4                 multiple choice

and prints dev accuracy after the last step per seed, mean ± std (sample std) and the difference of
each mode's mean from `random`. CPU runs are deterministic, so the numbers do not depend on machine load; a finished run
(its metrics.json) is reused when the script is run again with the same --out-dir.

  python benchmarks/batching_accuracy.py                                  # random, bucketed, packed x 3 seeds
  python benchmarks/batching_accuracy.py --modes random,packed --tasks rte --seeds 1,2,3,4,5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("FINETUNE_SHARED_DATA", ROOT.parent / "shared" / "data"))
MINI_MODEL = SHARED_DATA / "models" / "gpt2-mini-pretrained"

BUDGETS = {
    "sst2": ["trainer.max_steps=300"],
    "rte": ["trainer.max_steps=150", "optim.lr=1e-4"],
    "storycloze": ["trainer.max_steps=100", "optim.lr=1e-4"],
}


def run_one(args, task: str, mode: str, seed: int) -> dict:
    run_dir = args.out_dir / f"{task}-{mode}-seed{seed}"
    metrics_file = run_dir / "metrics.json"
    if not metrics_file.is_file():
        command = [
            sys.executable, str(ROOT / "train.py"), f"task={task}", f"data_dir={SHARED_DATA}", f"model.name_or_path={MINI_MODEL}",
            f"seed={seed}", f"trainer.batching={mode}", "trainer.tracker=null", "trainer.progress_bar=false",
            "trainer.save_total_limit=1", f"hydra.run.dir={run_dir}", *BUDGETS[task], *args.override,
        ]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        start = time.perf_counter()
        proc = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
        if proc.returncode != 0 or not metrics_file.is_file():
            sys.stderr.write(proc.stderr[-4000:])
            raise SystemExit(f"{task} {mode} seed {seed} failed (exit {proc.returncode}); command: {' '.join(command)}")
        print(f"  {task} {mode} seed {seed}: {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    metrics = json.loads(metrics_file.read_text())
    split = next(iter(metrics["eval_splits"]))
    return {"task": task, "mode": mode, "seed": seed, "accuracy": metrics["last_eval"][f"eval_{split}"]["accuracy"],
            "best_accuracy": metrics["eval"]["accuracy"], "steps": metrics["train"]["steps"],
            "examples_seen": metrics["train"]["examples_seen"]}


def table(results: list[dict], modes: list[str], tasks: list[str]) -> str:
    lines = ["| task | batching | dev accuracy per seed | mean ± std | vs random |", "|---|---|---|---|---:|"]
    for task in tasks:
        means = {}
        for mode in modes:
            values = [r["accuracy"] for r in results if r["task"] == task and r["mode"] == mode]
            if not values:
                continue
            means[mode] = statistics.mean(values)
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            diff = f"{means[mode] - means['random']:+.4f}" if "random" in means and mode != "random" else "-"
            lines.append(f"| {task} | {mode} | {' / '.join(f'{v:.4f}' for v in values)} | {means[mode]:.4f} ± {std:.4f} | {diff} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default="sst2,rte,storycloze")
    parser.add_argument("--modes", default="random,bucketed,packed")
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "outputs" / "batching_accuracy")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE", help="extra Hydra override for every run")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    tasks, modes = args.tasks.split(","), args.modes.split(",")
    unknown = [t for t in tasks if t not in BUDGETS]
    if unknown:
        raise SystemExit(f"unknown tasks {unknown}; choose from {', '.join(BUDGETS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    results = [run_one(args, task, mode, seed) for task in tasks for mode in modes for seed in seeds]
    print(table(results, modes, tasks))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
