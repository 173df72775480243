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

from finetune.report.collect import Job, collect, common_overrides
from finetune.report.render import main, plot, to_markdown, write_csv, write_report
from finetune.report.summary import PAPERS, by_task, summarise

__all__ = ["Job", "PAPERS", "by_task", "collect", "common_overrides", "main", "plot", "summarise", "to_markdown",
           "write_csv", "write_report"]
