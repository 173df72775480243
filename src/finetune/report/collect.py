"""Reading a sweep: every job directory, its overrides, metrics or error, and its setting."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

FOLD_KEYS = ("task.local.fold", "task.hub.fold")  # a cross-validation fold is a replicate, like a seed
GROUP_KEYS = ("task", "seed", "mode", *FOLD_KEYS)  # not part of a "setting"
MARKERS = ("metrics.json", "failure.json", "config.yaml", ".hydra")


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
