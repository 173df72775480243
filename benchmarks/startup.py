#!/usr/bin/env python
"""Where the seconds of a short run go before (and after) its training steps.

Runs `train.py` once (SST-2, the mini pretrained backbone, `trainer.max_steps=1`, the full dev
set, the `datasets` cache warm from a first, unmeasured run) under `python -X importtime`, and
prints one table: the imports of each library (cumulative, in the order the run first imports
them: a library's line leaves out what an earlier one already imported, so `evaluate` carries
transformers' pipelines and model code, which it imports), then the phases of the
run from the timestamps of its log: reading and checking the rows and tokenizing (cached) each
split, loading the model and estimating memory, the one training step, and evaluation, export and
exit. The whole job is measured from outside (process start to exit).

  python benchmarks/startup.py            # ../shared/data; a minute or so
  python benchmarks/startup.py --task rte

`-X importtime` itself adds a little to the import lines (about 5% here).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("FINETUNE_SHARED_DATA", ROOT.parent / "shared" / "data"))
MINI_MODEL = SHARED_DATA / "models" / "gpt2-mini-pretrained"
LIBRARIES = ("torch", "hydra", "omegaconf", "transformers", "datasets", "accelerate", "evaluate", "peft", "finetune",
             "matplotlib", "tensorboard", "scipy", "sklearn", "pandas")
LOG_LINE = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]\[[^\]]*\]\[\w+\] - (.*)$")


def imports(stderr: str) -> list[tuple[str, float]]:
    """Top-level libraries in first-import order with their cumulative import seconds (-X importtime lines)."""
    found = {}
    for line in stderr.splitlines():
        if not line.startswith("import time:"):
            continue
        _, cumulative, module = line.split("|")
        module = module.strip()
        if module in LIBRARIES and module not in found:
            found[module] = int(cumulative) / 1e6
    return list(found.items())


def phases(log_text: str) -> list[tuple[str, datetime]]:
    """(message, time) of the log lines that mark a phase boundary."""
    marks = []
    for line in log_text.splitlines():
        match = LOG_LINE.match(line)
        if match:
            marks.append((match.group(2), datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f")))
    return marks


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    with tempfile.TemporaryDirectory() as tmp:
        command = [
            sys.executable, "-X", "importtime", str(ROOT / "train.py"), f"task={args.task}", f"data_dir={SHARED_DATA}",
            f"model.name_or_path={MINI_MODEL}", "trainer.max_steps=1", "trainer.log_every=1", "trainer.progress_bar=false",
            *args.override,
        ]
        subprocess.run([*command, f"hydra.run.dir={tmp}/warm"], capture_output=True, env=env, check=True)  # fills the map cache
        start_wall = time.time()
        start = time.perf_counter()
        proc = subprocess.run([*command, f"hydra.run.dir={tmp}/run"], capture_output=True, text=True, env=env)
        whole = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(proc.stderr[-3000:])
        marks = phases((Path(tmp) / "run" / "train.log").read_text())
    rows = [(f"import {name} (on top of the libraries above it)", seconds) for name, seconds in imports(proc.stderr) if seconds >= 0.01]
    first = datetime.fromtimestamp(start_wall)
    previous, label = first, "imports, Hydra, config checks, reading and checking the training rows"
    for message, when in marks:
        if message.startswith("tokenizing"):
            rows.append((label, (when - previous).total_seconds()))
            previous, label = when, f"tokenizing (cached) and the next split's rows: {message.split(' (')[0].split('/')[-1]}"
        elif message.startswith("task "):
            rows.append((label, (when - previous).total_seconds()))
            previous, label = when, "model load, trackers, memory estimate"
        elif message.startswith("step 1 loss"):
            rows.append((label + ", first training step", (when - previous).total_seconds()))
            previous, label = when, "evaluation, export, metrics.json, curves, exit"
    rows.append((label, first.timestamp() + whole - previous.timestamp()))
    print(f"{args.task}, 1 training step, mini model, warm datasets cache, python {sys.version.split()[0]}")
    print("| part | seconds |\n|---|---:|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.2f} |")
    print(f"| **whole job (process start to exit)** | **{whole:.2f}** |")
    print("(the import lines are part of the first phase line, not added to it)")


if __name__ == "__main__":
    main()
