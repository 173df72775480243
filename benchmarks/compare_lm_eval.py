"""Does mode=zeroshot give lm-evaluation-harness's numbers, example for example?

Scores the same model on the same rows with the same prompt twice: with `python train.py
mode=zeroshot task=<task> trainer.max_eval_samples=N` and with the harness's HF backend (`HFLM`)
running the harness's own task YAML (glue/sst2, glue/rte, glue/qnli, glue/cola, glue/mrpc, storycloze_2016,
arc_easy, commonsense_qa) pointed at the same local files (only the dataset location and, where
the local files use other column names or string labels, a `process_docs` that renames them are
changed). Prints per task: the largest |difference| of a candidate's log-likelihood over all
examples and candidates, how many is_greedy flags and (prompt, answer) strings differ, and both
sides' acc / acc_norm (the harness's own acc/acc_norm code, added to metric_list where a YAML lists
only its task metric). Exits 1 when a task differs by more than --tolerance.

lm_eval is NOT a dependency of this project; install it in a throwaway environment:

    python -m venv --system-site-packages /tmp/lmeval-venv && /tmp/lmeval-venv/bin/pip install lm_eval
    PYTHONPATH=src /tmp/lmeval-venv/bin/python benchmarks/compare_lm_eval.py \\
        --data-dir ../shared/data --model ../shared/data/models/gpt2-mini-pretrained --limit 100

Local copies (../shared/data): SST-2/RTE/QNLI/CoLA/MRPC GLUE dev TSVs, Story Cloze CSV (its test file is our
validation split), ARC-Easy MMLU-style CSV (rows whose options were lost are filtered the same way
on both sides), CommonsenseQA validation JSONL (already in the harness's schema).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
HARNESS_TASKS = {  # our task -> the harness's task YAML (relative to lm_eval/tasks)
    "sst2": "glue/sst2/default.yaml",
    "cola": "glue/cola/default.yaml",
    "mrpc": "glue/mrpc/default.yaml",
    "rte": "glue/rte/default.yaml",
    "qnli": "glue/qnli/default.yaml",
    "storycloze": "storycloze/storycloze_2016.yaml",
    "arc_easy": "arc/arc_easy.yaml",
    "commonsenseqa": "commonsense_qa/default.yaml",
}


# ---------------------------------------------------------------- the harness's side: local files
def _tsv(path: Path, names: list[str] | None = None) -> list[dict]:
    with open(path, encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        rows = list(reader)
    header, body = (names, rows) if names else (rows[0], rows[1:])
    return [dict(zip(header, row)) for row in body if row]


def _docs(task: str, data: Path) -> list[dict]:
    """The validation rows in the harness task's own schema (HF `nyu-mll/glue`, `LSDSem/story_cloze`, ...)."""
    if task == "sst2":
        return [{"sentence": r["sentence"], "label": int(r["label"]), "idx": i} for i, r in enumerate(_tsv(data / "glue/SST-2/dev.tsv"))]
    if task == "cola":
        rows = _tsv(data / "glue/CoLA/dev.tsv", ["source", "label", "original_label", "sentence"])
        return [{"sentence": r["sentence"], "label": int(r["label"]), "idx": i} for i, r in enumerate(rows)]
    if task == "mrpc":
        rows = _tsv(data / "glue/MRPC/dev.tsv")
        return [{"sentence1": r["#1 String"], "sentence2": r["#2 String"], "label": int(r["Quality"]), "idx": i} for i, r in enumerate(rows)]
    if task == "rte":
        labels = {"entailment": 0, "not_entailment": 1}
        return [{"sentence1": r["sentence1"], "sentence2": r["sentence2"], "label": labels[r["label"]], "idx": i}
                for i, r in enumerate(_tsv(data / "glue/RTE/dev.tsv"))]
    if task == "qnli":
        labels = {"entailment": 0, "not_entailment": 1}
        return [{"question": r["question"], "sentence": r["sentence"], "label": labels[r["label"]], "idx": i}
                for i, r in enumerate(_tsv(data / "glue/QNLI/dev.tsv"))]
    if task == "storycloze":
        with open(data / "storycloze/cloze_test_test__spring2016.csv", encoding="utf-8-sig", newline="") as handle:
            rows = list(csv.DictReader(handle))
        return [{**{f"input_sentence_{k}": r[f"InputSentence{k}"] for k in range(1, 5)}, "sentence_quiz1": r["RandomFifthSentenceQuiz1"],
                 "sentence_quiz2": r["RandomFifthSentenceQuiz2"], "answer_right_ending": int(r["AnswerRightEnding"])} for r in rows]
    if task == "arc_easy":
        with open(data / "arc_easy/arc_easy_test.csv", encoding="utf-8-sig", newline="") as handle:
            rows = list(csv.reader(handle))
        numeric = {"1": "A", "2": "B", "3": "C", "4": "D"}
        docs = []
        for question, *options, answer in rows:  # our task YAML drops rows with a lost option or a 5th-option answer
            key = numeric.get(answer.strip(), answer.strip())
            if key not in "ABCD" or not key or any(not o.strip() for o in options) or not question.strip():
                continue
            docs.append({"question": question, "choices": {"text": options, "label": list("ABCD")}, "answerKey": key})
        return docs
    if task == "commonsenseqa":
        with open(data / "commonsenseqa/dev_rand_split.jsonl", encoding="utf-8") as handle:
            return [json.loads(line) for line in handle if line.strip()]
    raise ValueError(task)


def harness_samples(task: str, data: Path, lm, limit: int) -> list[dict]:
    import datasets
    import yaml
    import lm_eval
    from lm_eval.api.task import ConfigurableTask
    from lm_eval.evaluator import evaluate

    config = yaml.safe_load((Path(lm_eval.__file__).parent / "tasks" / HARNESS_TASKS[task]).read_text())
    docs = _docs(task, data)
    # The harness reads the dataset with datasets.load_dataset(dataset_path, ...): give it the same rows.
    folder = Path(tempfile.mkdtemp(prefix=f"harness-{task}-"))
    datasets.Dataset.from_list(docs).to_json(str(folder / "validation.jsonl"))
    config.update(dataset_path="json", dataset_name=None, dataset_kwargs={"data_files": {"validation": str(folder / "validation.jsonl")}},
                  training_split=None, fewshot_split=None, test_split=None, validation_split="validation")
    config.pop("tag", None)
    # Report acc and acc_norm whatever the YAML lists (CoLA lists only mcc): the harness's own definitions.
    listed = [m["metric"] for m in config.get("metric_list", [])]
    config["metric_list"] = [{"metric": m, "aggregation": "mean", "higher_is_better": True}
                             for m in ("acc", "acc_norm") if m not in listed] + config.get("metric_list", [])
    harness_task = ConfigurableTask(config=config)
    results = evaluate(lm=lm, task_dict={task: harness_task}, limit=limit, log_samples=True, bootstrap_iters=0)
    aggregate = {key.split(",")[0]: value for key, value in results["results"][task].items() if key.endswith(",none")}
    return sorted(results["samples"][task], key=lambda s: s["doc_id"]), aggregate


# ---------------------------------------------------------------- our side
def our_predictions(task: str, data: Path, model: str, limit: int, out: Path) -> tuple[list[dict], dict]:
    run_dir = out / task
    command = [sys.executable, str(ROOT / "train.py"), f"task={task}", "mode=zeroshot", f"data_dir={data}",
               f"model.name_or_path={model}", f"trainer.max_eval_samples={limit}", "trainer.progress_bar=false",
               "trainer.tracker=null", f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise SystemExit(f"our run failed:\n{result.stderr[-3000:]}")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    with open(run_dir / "predictions" / "validation.jsonl", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle], metrics


# The harness's names of the task metrics we also report (glue/cola: mcc, glue/mrpc: f1).
HARNESS_METRICS = {"matthews_correlation": "mcc", "f1": "f1"}


def compare(task: str, ours: list[dict], metrics: dict, theirs: list[dict], aggregate: dict) -> dict:
    if len(ours) != len(theirs):
        raise SystemExit(f"{task}: {len(ours)} examples here, {len(theirs)} in the harness")
    worst, greedy_differs, prompts_differ, candidates, predictions_differ = 0.0, 0, 0, 0, 0
    for mine, sample in zip(ours, theirs):
        lls = [response[0] for response in sample["filtered_resps"]]
        predictions_differ += int(np.argmax(lls)) != int(np.argmax([c["loglikelihood"] for c in mine["candidates"]]))
        if len(lls) != len(mine["candidates"]):
            raise SystemExit(f"{task} example {mine['index']}: {len(mine['candidates'])} candidates here, {len(lls)} in the harness")
        for candidate, (ll, greedy), (context, continuation) in zip(mine["candidates"], sample["filtered_resps"], sample["arguments"]):
            worst = max(worst, abs(candidate["loglikelihood"] - ll))
            greedy_differs += candidate["is_greedy"] != greedy
            prompts_differ += context != mine["prompt"] or continuation != " " + candidate["answer"]
            candidates += 1
    harness_acc = sum(s["acc"] for s in theirs) / len(theirs)
    harness_norm = sum(s.get("acc_norm", float("nan")) for s in theirs) / len(theirs) if "acc_norm" in theirs[0] else None
    task_metrics = {ours_name: (metrics["eval"][ours_name], aggregate[theirs_name]) for ours_name, theirs_name in HARNESS_METRICS.items()
                    if ours_name in metrics["eval"] and theirs_name in aggregate}
    return {"task": task, "examples": len(ours), "candidates": candidates, "max_abs_diff": worst, "greedy_differs": greedy_differs,
            "predictions_differ": predictions_differ, "task_metrics_ours_harness": task_metrics,
            "requests_differ": prompts_differ, "acc_ours": metrics["eval"]["accuracy"], "acc_harness": harness_acc,
            "acc_norm_ours": metrics["eval"]["accuracy_norm"], "acc_norm_harness": harness_norm}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--model", default=str(ROOT.parent / "shared" / "data" / "models" / "gpt2-mini-pretrained"))
    parser.add_argument("--tasks", default=",".join(HARNESS_TASKS))
    parser.add_argument("--limit", type=int, default=100, help="first N validation examples of each task")
    parser.add_argument("--batch-size", type=int, default=32, help="the harness's batch size")
    parser.add_argument("--tolerance", type=float, default=1e-4)
    args = parser.parse_args(argv)
    try:
        from lm_eval.models.huggingface import HFLM
    except ImportError:
        print("error: lm_eval is not installed here (see this script's docstring)", file=sys.stderr)
        return 2
    data, out = Path(args.data_dir).resolve(), Path(tempfile.mkdtemp(prefix="compare-lm-eval-"))
    lm = HFLM(pretrained=str(Path(args.model).resolve()), batch_size=args.batch_size, device="cpu")
    rows, ok = [], True
    for task in args.tasks.split(","):
        ours, metrics = our_predictions(task, data, args.model, args.limit, out)
        theirs, aggregate = harness_samples(task, data, lm, args.limit)
        row = compare(task, ours, metrics, theirs, aggregate)
        ok &= (row["max_abs_diff"] <= args.tolerance and row["greedy_differs"] == 0 and row["requests_differ"] == 0
               and row["predictions_differ"] == 0)
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("\n| task | examples | candidates | max abs diff of log-likelihood | is_greedy differs | (prompt, answer) strings differ "
          "| predictions differ | acc ours / harness | acc_norm ours / harness | task metrics ours / harness |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        norm = f"{r['acc_norm_ours']:.4f} / {r['acc_norm_harness']:.4f}" if r["acc_norm_harness"] is not None else f"{r['acc_norm_ours']:.4f} / (not reported)"
        others = ", ".join(f"{name} {a:.4f} / {b:.4f}" for name, (a, b) in r["task_metrics_ours_harness"].items())
        print(f"| {r['task']} | {r['examples']} | {r['candidates']} | {r['max_abs_diff']:.2e} | {r['greedy_differs']} | "
              f"{r['requests_differ']} | {r['predictions_differ']} | {r['acc_ours']:.4f} / {r['acc_harness']:.4f} | {norm} | {others} |")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
