"""finetune.report on a synthetic multirun directory with hand-computed numbers.

std is the SAMPLE standard deviation (n - 1 in the denominator, numpy's ddof=1):
  sst2 lr=2e-5: accuracy 0.80, 0.82, 0.84 -> mean 0.82, std sqrt((0.02² + 0 + 0.02²) / 2) = 0.02
  sst2 lr=5e-5: accuracy 0.85, 0.86, 0.90 -> mean 0.87, std sqrt((0.0004 + 0.0001 + 0.0009) / 2) = sqrt(0.0007)
  mrpc lr=2e-5: one seed -> std empty, n = 1
"""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from finetune import report

SQRT_0007 = math.sqrt(0.0007)  # 0.026457513...


def _job(root: Path, num: int, overrides: list[str], metrics: dict | None = None, task: str = "sst2",
         main: str = "accuracy", failure: dict | None = None, hydra_dir: bool = True) -> Path:
    job = root / str(num)
    job.mkdir(parents=True)
    if hydra_dir:
        (job / ".hydra").mkdir()
        (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if metrics is not None:
        (job / "metrics.json").write_text(json.dumps({
            "task": task, "main_metric": main, "eval": {**metrics, "num_examples": 872}, "history": [],
        }))
        (job / "model").mkdir()  # a job's subfolders must not be mistaken for jobs
        (job / "model" / "config.json").write_text("{}")
    if failure is not None:
        (job / "failure.json").write_text(json.dumps(failure))
    return job


@pytest.fixture
def sweep(tmp_path) -> Path:
    root = tmp_path / "multirun" / "2026-01-01_00-00-00"
    common = ["trainer.max_steps=60"]
    values = {("2e-5", 1): 0.80, ("2e-5", 2): 0.82, ("2e-5", 3): 0.84, ("5e-5", 1): 0.90, ("5e-5", 2): 0.85, ("5e-5", 3): 0.86}
    num = 0
    for (lr, seed), accuracy in values.items():
        _job(root, num, ["task=sst2", *common, f"optim.lr={lr}", f"seed={seed}"], {"accuracy": accuracy})
        num += 1
    _job(root, num, ["task=mrpc", *common, "optim.lr=2e-5", "seed=1"], {"accuracy": 0.65, "f1": 0.70}, task="mrpc", main="f1")
    _job(root, num + 1, ["task=mrpc", *common, "optim.lr=5e-5", "seed=1"],
         failure={"error_type": "TrainingDiverged", "message": "training loss became nan by step 12"})
    _job(root, num + 2, ["task=mrpc", *common, "optim.lr=5e-5", "seed=2"])  # crashed: .hydra only
    (root / "multirun.yaml").write_text("hydra: {}\n")
    return root


def test_collect_reads_jobs_settings_and_failures(sweep):
    jobs = report.collect(sweep)
    assert [job.name for job in jobs] == [str(i) for i in range(9)]
    assert [job.ok for job in jobs] == [True] * 7 + [False, False]
    assert jobs[0].task == "sst2" and jobs[0].seed == "1" and jobs[0].setting == (("optim.lr", "2e-5"),)
    assert jobs[6].task == "mrpc" and jobs[6].main_metric == "f1" and jobs[6].metrics == {"accuracy": 0.65, "f1": 0.70}
    assert jobs[7].error == "TrainingDiverged: training loss became nan by step 12"
    assert jobs[8].error.startswith("no metrics.json") and jobs[8].task == "mrpc"
    assert report.common_overrides(jobs) == ["trainer.max_steps=60"]


def test_summary_numbers_are_mean_and_sample_std(sweep):
    rows = report.summarise(report.collect(sweep))
    assert [(r["task"], r["setting"], r["n"]) for r in rows] == [
        ("mrpc", "optim.lr=2e-5", 1), ("sst2", "optim.lr=2e-5", 3), ("sst2", "optim.lr=5e-5", 3),
    ]
    mrpc, low, high = rows
    assert low["metrics"]["accuracy"]["mean"] == pytest.approx(0.82, abs=1e-12)
    assert low["metrics"]["accuracy"]["std"] == pytest.approx(0.02, abs=1e-12)
    assert (low["best"], low["best_seed"]) == (0.84, "3")
    assert high["metrics"]["accuracy"]["mean"] == pytest.approx(0.87, abs=1e-12)
    assert high["metrics"]["accuracy"]["std"] == pytest.approx(SQRT_0007, abs=1e-12)
    assert (high["best"], high["best_seed"], high["seeds"]) == (0.90, "1", ["1", "2", "3"])
    assert mrpc["main_metric"] == "f1" and mrpc["best"] == 0.70 and math.isnan(mrpc["metrics"]["f1"]["std"])


def test_written_report_markdown_csv_and_plot(sweep, tmp_path):
    out = tmp_path / "out"
    assert report.main([str(sweep), "--out", str(out)]) == 0
    markdown = (out / "report.md").read_text()
    assert "9 jobs, 7 succeeded, 2 failed" in markdown
    assert "Common overrides: `trainer.max_steps=60`" in markdown
    assert "| task | setting | accuracy | f1 | n | best (seed) |" in markdown
    assert "| sst2 | optim.lr=2e-5 | 0.8200 ± 0.0200 |  | 3 | accuracy=0.8400 (3) |" in markdown
    assert "| sst2 | optim.lr=5e-5 | 0.8700 ± 0.0265 |  | 3 | accuracy=0.9000 (1) |" in markdown
    assert "| mrpc | optim.lr=2e-5 | 0.6500 | 0.7000 | 1 | f1=0.7000 (1) |" in markdown
    failed = markdown.split("## Failed jobs")[1]
    assert "| 7 | `task=mrpc trainer.max_steps=60 optim.lr=5e-5 seed=1` | TrainingDiverged: training loss became nan by step 12 |" in failed
    assert "| 8 |" in failed and "no metrics.json" in failed

    with (out / "report.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    by_setting = {(r["task"], r["setting"]): r for r in rows}
    high = by_setting[("sst2", "optim.lr=5e-5")]
    assert (high["n"], high["seeds"], high["best"], high["best_seed"]) == ("3", "1 2 3", "0.900000", "1")
    assert (high["accuracy_mean"], high["accuracy_std"], high["accuracy_max"]) == ("0.870000", f"{SQRT_0007:.6f}", "0.900000")
    assert by_setting[("mrpc", "optim.lr=2e-5")]["f1_std"] == ""

    png = out / "report.png"
    assert png.stat().st_size > 1000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (sweep / "report.md").exists()  # --out was honoured


def test_jobs_without_overrides_file_use_varying_config_keys(tmp_path):
    """With hydra.output_subdir=null there is no .hydra/overrides.yaml: fall back to config.yaml."""
    root = tmp_path / "sweep"
    for num, (lr, seed, accuracy) in enumerate([(1e-5, 1, 0.5), (1e-5, 2, 0.7), (3e-5, 1, 0.9)]):
        job = _job(root, num, [], {"accuracy": accuracy}, hydra_dir=False)
        (job / "config.yaml").write_text(yaml.safe_dump({
            "task": {"name": "sst2", "main_metric": "accuracy"}, "seed": seed,
            "optim": {"lr": lr, "betas": [0.9, 0.999]}, "paths": {"output_dir": str(job)},
        }))
    rows = report.summarise(report.collect(root))
    assert [(r["setting"], r["n"]) for r in rows] == [("optim.lr=1e-05", 2), ("optim.lr=3e-05", 1)]
    assert rows[0]["metrics"]["accuracy"]["mean"] == pytest.approx(0.6)
    assert rows[0]["metrics"]["accuracy"]["std"] == pytest.approx(math.sqrt(0.02))


def test_command_line_entry_point(sweep):
    result = subprocess.run([sys.executable, "-m", "finetune.report", str(sweep)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "| sst2 | optim.lr=2e-5 | 0.8200 ± 0.0200 |" in result.stdout
    assert all((sweep / name).is_file() for name in ("report.md", "report.csv", "report.png"))
    missing = subprocess.run([sys.executable, "-m", "finetune.report", str(sweep / "nope")], capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "is not a directory" in missing.stderr


def test_folds_are_replicates_like_seeds(tmp_path):
    """`-m 'task.local.fold=range(5)'`: one row, n = 5, mean ± sample std over the folds, the best fold.
    accuracy 0.70, 0.80, 0.90, 0.60, 0.75 -> mean 0.75, std sqrt((0.05² + 0.05² + 0.15² + 0.15² + 0) / 4) = sqrt(0.0125)."""
    root = tmp_path / "multirun" / "folds"
    for fold, accuracy in enumerate([0.70, 0.80, 0.90, 0.60, 0.75]):
        _job(root, fold, ["task=trec", "task.local.folds=5", f"task.local.fold={fold}"], {"accuracy": accuracy}, task="trec")
    jobs = report.collect(root)
    assert [job.fold for job in jobs] == ["0", "1", "2", "3", "4"] and all(job.setting == () for job in jobs)
    [row] = report.summarise(jobs)
    assert (row["n"], row["folds"], row["best"], row["best_fold"], row["replicate"]) == (5, ["0", "1", "2", "3", "4"], 0.90, "2", "fold 2")
    assert row["metrics"]["accuracy"]["mean"] == pytest.approx(0.75, abs=1e-12)
    assert row["metrics"]["accuracy"]["std"] == pytest.approx(math.sqrt(0.0125), abs=1e-12)
    out = tmp_path / "out"
    assert report.main([str(root), "--out", str(out)]) == 0
    markdown = (out / "report.md").read_text()
    assert "over seeds and folds" in markdown and "Common overrides: `task.local.folds=5`" in markdown
    assert f"| trec | (defaults) | 0.7500 ± {math.sqrt(0.0125):.4f} | 5 | accuracy=0.9000 (fold 2) |" in markdown
    with (out / "report.csv").open() as handle:
        [csv_row] = list(csv.DictReader(handle))
    assert (csv_row["n"], csv_row["folds"], csv_row["best_fold"]) == ("5", "0 1 2 3 4", "2")


def test_seeds_crossed_with_folds_and_folds_read_from_config_yaml(tmp_path):
    """2 seeds x 2 folds per setting is n = 4; without overrides.yaml the fold comes from config.yaml."""
    root = tmp_path / "sweep"
    values = {(1, 0): 0.5, (1, 1): 0.6, (2, 0): 0.7, (2, 1): 0.8}
    for num, ((seed, fold), accuracy) in enumerate(values.items()):
        job = _job(root, num, [], {"accuracy": accuracy}, task="trec", hydra_dir=False)
        (job / "config.yaml").write_text(yaml.safe_dump({
            "task": {"name": "trec", "main_metric": "accuracy", "local": {"folds": 2, "fold": fold}}, "seed": seed,
            "optim": {"lr": 1e-5}, "paths": {"output_dir": str(job)},
        }))
    [row] = report.summarise(report.collect(root))
    assert (row["n"], row["seeds"], row["folds"], row["replicate"]) == (4, ["1", "1", "2", "2"], ["0", "1"], "seed 2, fold 1")
    assert row["metrics"]["accuracy"]["mean"] == pytest.approx(0.65)


def test_best_is_the_lowest_when_the_main_metric_is_better_lower(tmp_path):
    root = tmp_path / "sweep"
    for num, (seed, perplexity) in enumerate([(1, 30.0), (2, 25.0), (3, 40.0)]):
        job = _job(root, num, ["task=wikitext2", f"seed={seed}"], {"perplexity": perplexity}, task="wikitext2", main="perplexity")
        metrics = json.loads((job / "metrics.json").read_text())
        (job / "metrics.json").write_text(json.dumps({**metrics, "main_metric_mode": "min"}))
    [row] = report.summarise(report.collect(root))
    assert (row["best"], row["best_seed"]) == (25.0, "2")


def _run(path: Path, task: str, mode: str, overrides: list[str], metrics: dict, main: str = "accuracy") -> Path:
    """A single run directory (not a sweep): .hydra/overrides.yaml and metrics.json with its mode."""
    (path / ".hydra").mkdir(parents=True)
    (path / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"task={task}", *overrides]))
    (path / "metrics.json").write_text(json.dumps({"task": task, "mode": mode, "main_metric": main,
                                                   "eval": {**metrics, "num_examples": 100}}))
    return path


def test_zero_shot_and_fine_tuned_runs_side_by_side_with_the_gpt1_paper(tmp_path):
    """Run directories and a sweep given together; rows per (task, mode, setting), a by-task table with
    one column per mode (zero-shot first) and the paper's figure, and the note on the paper's splits."""
    zs_sst2 = _run(tmp_path / "outputs/sst2/zeroshot/t1", "sst2", "zeroshot", ["mode=zeroshot"], {"accuracy": 0.55, "accuracy_norm": 0.54})
    zs_k3 = _run(tmp_path / "outputs/sst2/zeroshot/t2", "sst2", "zeroshot", ["mode=zeroshot", "task.prompt.shots=3"],
                 {"accuracy": 0.60, "accuracy_norm": 0.58})
    zs_mrpc = _run(tmp_path / "outputs/mrpc/zeroshot/t1", "mrpc", "zeroshot", ["mode=zeroshot"], {"accuracy": 0.40, "f1": 0.30})
    sweep = tmp_path / "multirun" / "s"
    for num, (seed, accuracy) in enumerate([(1, 0.80), (2, 0.84)]):
        _run(sweep / str(num), "sst2", "train", ["trainer.max_steps=300", f"seed={seed}"], {"accuracy": accuracy})
    _run(sweep / "2", "mrpc", "train", ["trainer.max_steps=300", "seed=1"], {"accuracy": 0.70, "f1": 0.80})
    out = tmp_path / "report"
    assert report.main([str(zs_sst2), str(zs_k3), str(zs_mrpc), str(sweep), "--paper", "gpt1", "--out", str(out)]) == 0
    markdown = (out / "report.md").read_text()
    by_task, _, settings = markdown.partition("## All settings")
    assert "| task | metric | zeroshot | train | GPT-1 paper |" in by_task
    # The better zero-shot setting (3-shot) is shown and named; the paper's MRPC figure is F1, so F1 is compared.
    assert "| sst2 | accuracy | 0.6000 (task.prompt.shots=3) | 0.8200 ± 0.0283 | accuracy 0.913 |" in by_task
    assert "| mrpc | f1 | 0.3000 | 0.8000 | f1 0.823 |" in by_task
    assert "GLUE test sets" in by_task and "Story Cloze test set" in by_task
    rows = [line for line in settings.splitlines() if line.startswith("| sst2") or line.startswith("| mrpc")]
    assert [r.split(" | ")[1:3] for r in rows] == [["zeroshot", "(defaults)"], ["train", "trainer.max_steps=300"],
                                                    ["zeroshot", "(defaults)"], ["zeroshot", "task.prompt.shots=3"],
                                                    ["train", "trainer.max_steps=300"]]
    with (out / "report.csv").open() as handle:
        csv_rows = list(csv.DictReader(handle))
    assert [(r["task"], r["mode"]) for r in csv_rows] == [("mrpc", "zeroshot"), ("mrpc", "train"), ("sst2", "zeroshot"),
                                                         ("sst2", "zeroshot"), ("sst2", "train")]
    assert csv_rows[0]["paper_gpt1"] == "f1 0.823"
    with pytest.raises(SystemExit) as exit_:  # argparse: one line naming the choices
        report.main([str(sweep), "--paper", "gpt9"])
    assert exit_.value.code == 2


def test_paper_column_for_mnli_shows_matched_and_mismatched(tmp_path):
    run = _run(tmp_path / "mnli", "mnli", "zeroshot", ["mode=zeroshot"], {"accuracy": 0.35})
    assert report.main([str(run), "--paper", "gpt1", "--out", str(tmp_path / "out")]) == 0
    assert "accuracy 0.821 (matched) / 0.814 (mismatched)" in (tmp_path / "out" / "report.md").read_text()
