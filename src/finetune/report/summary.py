"""Summarising jobs: one row per (task, mode, setting) with mean, sample std and best over replicates."""

from __future__ import annotations

import math
import statistics
from collections import Counter

from finetune.report.collect import Job, _sort_key

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
