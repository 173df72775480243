"""Writing the report: report.md, report.csv and report.png, and the command line."""

from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path

from finetune.report.collect import Job, collect, common_overrides
from finetune.report.summary import PAPERS, _cell, _fmt, _has_modes, _metric_columns, _paper_cell, by_task, summarise

REPORT_NAMES = ("report.md", "report.csv", "report.png")


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
    parser = argparse.ArgumentParser(prog="python -m finetune.report", description="Summarise runs: report.md, report.csv and report.png of Hydra multiruns and run directories.")
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
