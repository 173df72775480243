"""Summarise runs: `python -m finetune.report multirun/<time> [more sweeps or run dirs] [--paper gpt1] [--out DIR]`.

Reads every job directory of the given Hydra multiruns and single run directories (one with
`.hydra/overrides.yaml`, `metrics.json`, `config.yaml` or `failure.json`), groups the jobs by task,
mode (train, zeroshot, evaluate, ...) and setting (the overrides other than `task`, `seed`, `mode`
and the cross-validation fold `task.local.fold` / `task.hub.fold`), and writes report.md, report.csv
and report.png. Zero-shot and fine-tuned runs of a task are rows next to each other, and a "by task"
table puts their main metric side by side; `--paper gpt1` adds the GPT-1 paper's published figure
for the tasks it reports.

* Metrics are the job's reported evaluation (metrics.json "eval": the best evaluation on the first
  eval split, the checkpoint that was exported).
* Each metric is given as mean ± std over the group's replicates: its seeds and folds (the K jobs
  of `-m 'task.local.fold=range(K)'` are one row, n = K); std is the SAMPLE standard deviation
  (ddof=1, as numpy.std(..., ddof=1)); it is empty when a group has one job. `n` counts successful
  jobs; `best` is the highest main metric in the group (the lowest when task.main_metric_mode=min,
  e.g. perplexity) and the seed (or fold) that reached it.
* Overrides that are the same in every job are printed once ("common overrides") and left out of
  the setting; when a job has no .hydra/overrides.yaml (e.g. `hydra.output_subdir=null`), its
  overrides are the config.yaml keys whose values differ between jobs.
* Failed jobs (failure.json, or no metrics.json) are listed separately with their error.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import statistics
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import yaml

FOLD_KEYS = ("task.local.fold", "task.hub.fold")  # a cross-validation fold is a replicate, like a seed
GROUP_KEYS = ("task", "seed", "mode", *FOLD_KEYS)  # not part of a "setting"
MODE_ORDER = ("zeroshot", "train", "evaluate", "predict")  # zero-shot first: what fine-tuning starts from

# Published results to put beside ours (--paper). Metric keys are ours; values on our 0-1 scale.
PAPERS = {
    "gpt1": {
        "column": "GPT-1 paper",
        "note": ("GPT-1 paper: Radford et al. 2018, \"Improving Language Understanding by Generative Pre-Training\" "
                 "(Tables 2-4), a 12-layer 768-wide Transformer fine-tuned per task. Its GLUE figures are on the GLUE "
                 "test sets (scored by the GLUE server; MNLI matched / mismatched), Story Cloze on the Story Cloze test "
                 "set (our storycloze validation split); our rows are scored on the splits named in each run (GLUE dev), "
                 "so they are not the same examples, and the paper's model is not ours."),
        "results": {
            "sst2": [("accuracy", 0.913, None)],
            "cola": [("matthews_correlation", 0.454, None)],
            "mrpc": [("f1", 0.823, None)],
            "stsb": [("pearson", 0.820, None)],
            "qqp": [("f1", 0.703, None)],
            "mnli": [("accuracy", 0.821, "matched"), ("accuracy", 0.814, "mismatched")],
            "qnli": [("accuracy", 0.881, None)],
            "rte": [("accuracy", 0.560, None)],
            "storycloze": [("accuracy", 0.865, None)],
        },
    },
}
MARKERS = ("metrics.json", "failure.json", "config.yaml", ".hydra")
REPORT_NAMES = ("report.md", "report.csv", "report.png")


@dataclass
class Job:
    name: str  # path relative to the sweep directory
    path: Path
    overrides: list = field(default_factory=list)
    task: str | None = None
    seed: str | None = None
    fold: str | None = None
    mode: str | None = None  # metrics.json "mode" (config mode.name); None for runs that predate modes
    main_metric: str | None = None
    main_metric_mode: str = "max"  # min for perplexity: the best job is the lowest
    metrics: dict = field(default_factory=dict)
    ok: bool = False
    error: str | None = None
    setting: tuple = ()


# ------------------------------------------------------------------------------------ reading
def _job_dirs(root: Path) -> list[Path]:
    found = []
    for path in sorted(root.iterdir(), key=lambda p: [_sort_key(part) for part in re.split(r"(\d+)", p.name)]):
        if not path.is_dir() or path.name.startswith("."):
            continue
        if any((path / marker).exists() for marker in MARKERS):
            found.append(path)  # a job: do not descend into model/, checkpoints/
        else:
            found.extend(_job_dirs(path))
    return found


def _split_override(override: str) -> tuple[str, str]:
    key, _, value = override.partition("=")
    return key.lstrip("+~"), value


def _flatten(node, prefix: str = "") -> dict:
    if isinstance(node, dict):
        flat = {}
        for key, value in node.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: json.dumps(node) if isinstance(node, (list, dict)) else node}


def _read_yaml(path: Path):
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None


def _sort_key(value: str):
    try:
        return (0, float(value), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(value))


def _read_job(root: Path, path: Path) -> tuple[Job, dict]:
    job = Job(name=str(path.relative_to(root)), path=path)
    overrides = _read_yaml(path / ".hydra" / "overrides.yaml")
    if isinstance(overrides, list):
        job.overrides = [str(o) for o in overrides]
    config = _read_yaml(path / "config.yaml") or _read_yaml(path / ".hydra" / "config.yaml") or {}
    flat_config = _flatten(config) if isinstance(config, dict) else {}
    failure = None
    if (path / "failure.json").is_file():
        try:
            failure = json.loads((path / "failure.json").read_text())
        except (OSError, json.JSONDecodeError):
            failure = {"error_type": "unknown", "message": "unreadable failure.json"}
        if not job.overrides and failure.get("overrides"):
            job.overrides = list(failure["overrides"])
    metrics = None
    if (path / "metrics.json").is_file():
        try:
            metrics = json.loads((path / "metrics.json").read_text())
        except (OSError, json.JSONDecodeError):
            failure = failure or {"error_type": "unreadable", "message": "metrics.json could not be parsed"}
    if metrics is not None and failure is None:
        job.ok = True
        job.task = metrics.get("task")
        job.mode = metrics.get("mode")
        job.main_metric = metrics.get("main_metric")
        job.main_metric_mode = metrics.get("main_metric_mode") or flat_config.get("task.main_metric_mode") or "max"
        job.metrics = {k: float(v) for k, v in (metrics.get("eval") or {}).items()
                       if isinstance(v, (int, float)) and k != "num_examples"}
    else:
        job.error = (f"{failure.get('error_type')}: {failure.get('message')}" if failure
                     else "no metrics.json (the job crashed, was killed, or is still running)")
    overrides = dict(_split_override(o) for o in job.overrides)
    job.task = job.task or overrides.get("task") or flat_config.get("task.name")
    job.seed = overrides.get("seed", str(flat_config["seed"]) if "seed" in flat_config else None)
    folds = [overrides.get(key, flat_config.get(key)) for key in FOLD_KEYS]
    job.fold = next((str(fold) for fold in folds if fold is not None), None)
    job.mode = job.mode or overrides.get("mode") or flat_config.get("mode.name")
    job.main_metric = job.main_metric or flat_config.get("task.main_metric")
    return job, flat_config


def _is_job(path: Path) -> bool:
    return any((path / marker).exists() for marker in MARKERS)


def collect(sweep_dirs) -> list[Job]:
    """Every job under `sweep_dirs` (one directory or several: sweeps or run directories), with its
    task, mode, seed, setting, metrics or error. Jobs of one sweep are named relative to it."""
    roots = [Path(sweep_dirs)] if isinstance(sweep_dirs, (str, Path)) else [Path(d) for d in sweep_dirs]
    read = []
    for root in roots:
        if not root.is_dir():
            raise FileNotFoundError(f"'{root}' is not a directory")
        if _is_job(root):  # a single run directory
            job, flat = _read_job(root.parent, root)
            job.name = str(root)
            read.append((job, flat))
            continue
        for path in _job_dirs(root):
            job, flat = _read_job(root, path)
            if len(roots) > 1:
                job.name = str(root / job.name)
            read.append((job, flat))
    jobs = [job for job, _ in read]
    # Jobs without overrides.yaml: their overrides are the config keys that vary across jobs.
    configs = [flat for _, flat in read if flat]
    if any(not job.overrides for job in jobs) and len(configs) > 1:
        keys = sorted({k for flat in configs for k in flat})
        varying = [k for k in keys if len({json.dumps(flat.get(k), default=str) for flat in configs}) > 1
                   and not k.startswith(("paths.", "hydra."))]
        for job, flat in read:
            if not job.overrides and flat:
                renamed = {"task.name": "task", "mode.name": "mode"}
                job.overrides = [f"{renamed.get(k, k)}={flat.get(k)}" for k in varying
                                 if not k.startswith(("task.", "mode.")) or k in renamed]
    # Setting = overrides other than task/seed that differ between jobs (constant ones are "common").
    per_job = [dict(_split_override(o) for o in job.overrides) for job in jobs]
    all_keys = []
    for overrides in per_job:
        all_keys += [k for k in overrides if k not in all_keys]
    common = {k for k in all_keys if k not in GROUP_KEYS and len({o.get(k) for o in per_job}) == 1}
    for job, overrides in zip(jobs, per_job):
        job.setting = tuple((k, overrides[k]) for k in all_keys if k in overrides and k not in GROUP_KEYS and k not in common)
    return jobs


def common_overrides(jobs: list[Job]) -> list[str]:
    per_job = [dict(_split_override(o) for o in job.overrides) for job in jobs]
    if not per_job:
        return []
    first = per_job[0]
    return [f"{k}={v}" for k, v in first.items()
            if k not in GROUP_KEYS and all(o.get(k) == v for o in per_job)]


# ---------------------------------------------------------------------------------- summarising
def _setting_text(setting: tuple) -> str:
    return " ".join(f"{k}={v}" for k, v in setting) or "(defaults)"


def _mode_key(mode: str | None) -> tuple:
    return (MODE_ORDER.index(mode), "") if mode in MODE_ORDER else (len(MODE_ORDER), mode or "")


def summarise(jobs: list[Job]) -> list[dict]:
    """One row per (task, mode, setting): per metric mean, sample std, max; n; best main metric and its
    seed (and fold); `replicate` names that job: its seed, "fold i", or both when both vary."""
    groups: dict[tuple, list[Job]] = {}
    for job in jobs:
        if job.ok:
            groups.setdefault((job.task or "?", job.mode, job.setting), []).append(job)
    rows = []
    for (task, mode, setting), members in sorted(
        groups.items(), key=lambda item: (item[0][0], _mode_key(item[0][1]), [(k, _sort_key(v)) for k, v in item[0][2]])
    ):
        metric_names = []
        for job in members:
            metric_names += [m for m in job.metrics if m not in metric_names]
        main = members[0].main_metric or (metric_names[0] if metric_names else None)
        row = {"task": task, "mode": mode, "setting": _setting_text(setting), "n": len(members), "main_metric": main,
               "seeds": [job.seed for job in sorted(members, key=lambda j: _sort_key(j.seed))],
               "folds": sorted({job.fold for job in members if job.fold is not None}, key=_sort_key), "metrics": {}}
        for name in metric_names:
            values = [job.metrics[name] for job in members if name in job.metrics]
            row["metrics"][name] = {
                "mean": statistics.fmean(values),
                "std": statistics.stdev(values) if len(values) > 1 else math.nan,  # sample std (n - 1)
                "max": max(values),
                "values": values,
            }
        scored = [job for job in members if main in job.metrics]
        if scored:
            pick = min if members[0].main_metric_mode == "min" else max
            best = pick(scored, key=lambda job: job.metrics[main])
            row["best"], row["best_seed"], row["best_fold"] = best.metrics[main], best.seed, best.fold
        else:
            row["best"], row["best_seed"], row["best_fold"] = math.nan, None, None
        row["replicate"] = _replicate(row, row["best_seed"], row["best_fold"])
        rows.append(row)
    return rows


def _replicate(row: dict, seed, fold) -> str | None:
    """The seed, "fold i", or "seed s, fold i" when the group has several seeds and folds."""
    if seed is None and fold is None:
        return None
    if fold is None:
        return seed
    return f"seed {seed}, fold {fold}" if len(set(row["seeds"])) > 1 else f"fold {fold}"


def _fmt(value: float, digits: int = 4) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _metric_columns(rows: list[dict]) -> list[str]:
    """Main metrics first (the most common main metric first), then every other metric."""
    mains = Counter(row["main_metric"] for row in rows if row["main_metric"] in row["metrics"])
    names = sorted(mains, key=lambda name: (-mains[name], name))
    names += [m for row in rows for m in row["metrics"]]
    return list(dict.fromkeys(names))


def _paper_cell(paper: str | None, task: str) -> str:
    if paper is None:
        return ""
    entries = PAPERS[paper]["results"].get(task)
    if not entries:
        return ""
    values = " / ".join(f"{value:.3f}" + (f" ({split})" if split else "") for _, value, split in entries)
    return f"{entries[0][0]} {values}"


def _has_modes(rows: list[dict]) -> bool:
    return any(row["mode"] for row in rows)


def _cell(stats: dict | None) -> str:
    if stats is None:
        return ""
    return _fmt(stats["mean"]) if math.isnan(stats["std"]) else f"{_fmt(stats['mean'])} ± {_fmt(stats['std'])}"


def by_task(rows: list[dict], paper: str | None = None) -> tuple[list[str], list[dict]]:
    """(modes, one entry per task): per mode the best setting's mean ± std of the compared metric.

    The compared metric is the paper's metric for the task when --paper gives one and the runs report
    it, else the task's main metric. A mode with several settings shows its best one, named.
    """
    modes = sorted({row["mode"] for row in rows}, key=_mode_key)
    table = []
    for task in dict.fromkeys(row["task"] for row in rows):
        task_rows = [row for row in rows if row["task"] == task]
        entries = PAPERS[paper]["results"].get(task, []) if paper else []
        metric = task_rows[0]["main_metric"]
        if entries and any(entries[0][0] in row["metrics"] for row in task_rows):
            metric = entries[0][0]
        cells = {}
        for mode in modes:
            candidates = [row for row in task_rows if row["mode"] == mode and metric in row["metrics"]]
            if candidates:
                best = max(candidates, key=lambda row: row["metrics"][metric]["mean"])
                named = best["setting"].strip("()")  # "(defaults)" -> "defaults"
                cells[mode] = _cell(best["metrics"][metric]) + (f" ({named})" if len(candidates) > 1 else "")
        table.append({"task": task, "metric": metric, "cells": cells, "paper": _paper_cell(paper, task)})
    return modes, table


def to_markdown(sweep_dir, jobs: list[Job], rows: list[dict], paper: str | None = None) -> str:
    names = _metric_columns(rows)
    failed = [job for job in jobs if not job.ok]
    where = ", ".join(str(d) for d in sweep_dir) if isinstance(sweep_dir, (list, tuple)) else str(sweep_dir)
    lines = [f"# Sweep report: {where}", ""]
    folds = any(row["folds"] for row in rows)
    over = "seeds and folds" if folds else "seeds"
    lines.append(f"{len(jobs)} jobs, {len(jobs) - len(failed)} succeeded, {len(failed)} failed. "
                 f"Cells: mean ± sample std (n - 1) over {over}; best: highest main metric (lowest when better lower; {'seed or fold' if folds else 'seed'}).")
    common = common_overrides(jobs)
    if common:
        lines += ["", "Common overrides: `" + " ".join(common) + "`"]
    known = {row["mode"] for row in rows}
    modes = len(known) > 1  # a mode column only when runs of several modes are reported together
    if len(known) == 1 and None not in known:
        lines += ["", f"Mode: {next(iter(known))}"]
    side_by_side = modes or (paper is not None and _has_modes(rows))
    if side_by_side:
        mode_names, table = by_task(rows, paper)
        header = ["task", "metric", *[m or "(no mode)" for m in mode_names]] + ([PAPERS[paper]["column"]] if paper else [])
        lines += ["", "## By task", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for entry in table:
            cells = [entry["task"], entry["metric"], *[entry["cells"].get(m, "") for m in mode_names]]
            lines.append("| " + " | ".join(cells + ([entry["paper"]] if paper else [])) + " |")
        if paper:
            lines += ["", PAPERS[paper]["note"]]
        lines += ["", "## All settings"]
    extra = (["mode"] if modes else [])
    paper_column = paper is not None and not side_by_side  # else it is in the by-task table
    lines += ["", "| task | " + "".join(f"{e} | " for e in extra) + "setting | " + " | ".join(names) + f" | n | best ({'seed/fold' if folds else 'seed'}) |"
              + (f" {PAPERS[paper]['column']} |" if paper_column else ""),
              "|---|" + "---|" * len(extra) + "---|" + "---|" * len(names) + "---|---|" + ("---|" if paper_column else "")]
    for row in rows:
        cells = [_cell(row["metrics"].get(name)) for name in names]
        best = f"{row['main_metric']}={_fmt(row['best'])} ({row['replicate']})" if row["replicate"] is not None else ""
        mode = f"{row['mode'] or ''} | " if modes else ""
        lines.append(f"| {row['task']} | {mode}{row['setting']} | " + " | ".join(cells) + f" | {row['n']} | {best} |"
                     + (f" {_paper_cell(paper, row['task'])} |" if paper_column else ""))
    if paper_column:
        lines += ["", PAPERS[paper]["note"]]
    if failed:
        lines += ["", "## Failed jobs", "", "| job | overrides | error |", "|---|---|---|"]
        for job in failed:
            error = (job.error or "").replace("|", "\\|").replace("\n", " ")
            lines.append(f"| {job.name} | `{' '.join(job.overrides)}` | {error} |")
    return "\n".join(lines) + "\n"


def write_csv(path: Path, rows: list[dict], jobs: list[Job], paper: str | None = None) -> None:
    names = _metric_columns(rows)
    header = ["task", "mode", "setting", "n", "seeds", "folds", "main_metric", "best", "best_seed", "best_fold"]
    for name in names:
        header += [f"{name}_mean", f"{name}_std", f"{name}_max"]
    if paper:
        header.append(f"paper_{paper}")
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for row in rows:
            out = [row["task"], row["mode"] or "", row["setting"], row["n"], " ".join(str(s) for s in row["seeds"]),
                   " ".join(row["folds"]), row["main_metric"], _fmt(row["best"], 6), row["best_seed"], row["best_fold"]]
            for name in names:
                stats = row["metrics"].get(name)
                out += [_fmt(stats["mean"], 6), _fmt(stats["std"], 6), _fmt(stats["max"], 6)] if stats else ["", "", ""]
            if paper:
                out.append(_paper_cell(paper, row["task"]))
            writer.writerow(out)


def plot(path: Path, rows: list[dict]) -> None:
    """One panel per task: the main metric per (mode and) setting, mean ± sample std, each seed as a grey dot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(row["task"] for row in rows)) or ["(no successful jobs)"]
    fig, axes = plt.subplots(1, len(tasks), figsize=(max(4.0, 3.2 * len(tasks) + 1), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        task_rows = [row for row in rows if row["task"] == task]
        for i, row in enumerate(task_rows):
            stats = row["metrics"].get(row["main_metric"])
            if not stats:
                continue
            std = 0.0 if math.isnan(stats["std"]) else stats["std"]
            # Mean ± std as a point with error bar (not a bar from 0, which hides differences), seeds beside it.
            ax.errorbar(i, stats["mean"], yerr=std, fmt="o", color="#335c85", capsize=5, markersize=7, zorder=2)
            ax.scatter([i + 0.12] * len(stats["values"]), stats["values"], color="#999999", s=14, zorder=3)
        ax.set_xlim(-0.5, len(task_rows) - 0.5)
        ax.grid(axis="y", alpha=0.3)
        ax.set_xticks(range(len(task_rows)))
        labels = [(f"{row['mode']} " if row["mode"] else "") + row["setting"] for row in task_rows]
        ax.set_xticklabels([label.replace(" ", "\n") for label in labels], fontsize=7)
        ax.set_title(task)
        ax.set_ylabel(task_rows[0]["main_metric"] if task_rows else "")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(sweep_dir, jobs: list[Job] | None = None, out=None, paper: str | None = None) -> list[Path]:
    """report.md/.csv/.png for one sweep (written into it) or several directories (written into `out`)."""
    dirs = [Path(d) for d in sweep_dir] if isinstance(sweep_dir, (list, tuple)) else [Path(sweep_dir)]
    jobs = collect(dirs if len(dirs) > 1 else dirs[0]) if jobs is None else jobs
    out = Path(out) if out is not None else (dirs[0] if len(dirs) == 1 else Path("."))
    out.mkdir(parents=True, exist_ok=True)
    rows = summarise(jobs)
    paths = [out / name for name in REPORT_NAMES]
    paths[0].write_text(to_markdown(dirs if len(dirs) > 1 else dirs[0], jobs, rows, paper))
    write_csv(paths[1], rows, jobs, paper)
    plot(paths[2], rows)
    return paths


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m finetune.report", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", nargs="+",
                        help="Hydra multirun directories (e.g. multirun/2026-01-01_12-00-00) and/or single run directories")
    parser.add_argument("--paper", choices=sorted(PAPERS), default=None,
                        help="add a column of a paper's published results (gpt1: GLUE test / Story Cloze test figures)")
    parser.add_argument("--out", default=None,
                        help="where to write report.md/.csv/.png (default: the sweep dir; with several directories: .)")
    args = parser.parse_args(argv)
    try:
        jobs = collect(args.sweep_dir if len(args.sweep_dir) > 1 else args.sweep_dir[0])
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not jobs:
        print(f"error: no job directories under '{' '.join(args.sweep_dir)}'", file=sys.stderr)
        return 2
    paths = write_report(args.sweep_dir, jobs, args.out, args.paper)
    print(paths[0].read_text(), end="")
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
