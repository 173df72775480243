"""mode=zeroshot: score the pretrained language model on a task without training (K-shot with
task.prompt.shots=K), the way lm-evaluation-harness scores.

Classification, entailment, paraphrase and multiple-choice tasks: every (prompt, answer) pair is one
log-likelihood request (finetune.models.scoring), all of a split batched together. Per example:
* `accuracy`: the answer with the highest summed log-likelihood (the harness's acc);
* `accuracy_norm`: the highest log-likelihood per character of the answer text (the harness's acc_norm);
* the task's own metrics (F1, Matthews) on the `accuracy` predictions;
* with task.prompt.calibration=contextual, each of them on the calibrated predictions (`<name>_calibrated`):
  argmax of log p(answer | prompt) - log p(answer | content-free prompt) (Zhao et al. 2021).
Span QA (SQuAD) generates the answer greedily after its prompt until a stop string; exact match / F1.
predictions/<split>.jsonl has one line per example: its prompt (without the demonstrations, which
metrics.json lists), the gold label, the predictions and the score of every candidate.
"""

from __future__ import annotations

import json
import logging

import numpy as np

from finetune.data.prompts import Prompt
from finetune.data.sources import task_source
from finetune.errors import ConfigError
from finetune.metrics import main_metric_mode
from finetune.models.heads import HEADS
from finetune.models.scoring import ScoringStats, greedy_until, loglikelihood
from finetune.modes.outcome import Outcome, split_lines
from finetune.setup import setup
from finetune.training.evaluation import load_metrics

log = logging.getLogger("finetune")


def check(cfg) -> None:
    """A pretrained LM has no GPT-1 tokens, and the task's prompt must fit its roles and labels."""
    if cfg.model.gpt1_tokens:
        raise ConfigError("config key 'model.gpt1_tokens' = True: expected false in mode=zeroshot (the GPT-1 tokens are "
                          "learned in fine-tuning; a pretrained LM has none)")
    check_prompt(cfg)


def check_prompt(cfg) -> Prompt:
    """The task's prompt, checked against its roles and labels before anything is loaded."""
    task = cfg.task
    source, _ = task_source(task, cfg.data_dir)
    return Prompt(task, HEADS[task.head], list(source.columns))


def calibrated_predictions(scores: np.ndarray, content_free: np.ndarray) -> np.ndarray:
    """Contextual calibration: argmax over candidates of log p(a | x) - log p(a | content-free input).

    Dividing each label's probability by its content-free probability (Zhao et al. 2021, W = diag(p_cf)^-1)
    and taking the argmax is this difference of log-likelihoods; normalising either side over the
    candidates adds a constant per row and changes nothing.
    """
    return np.argmax(scores - content_free, axis=-1)


def _metrics(task, references: list[int], predictions: np.ndarray, norm: np.ndarray, calibrated: np.ndarray | None) -> dict:
    names = list(dict.fromkeys(["accuracy", *task.metrics]))
    modules = dict(zip(names, load_metrics(names)))
    results = {}
    for module in modules.values():
        results.update(module.compute(predictions=predictions.tolist(), references=references))
    results["accuracy_norm"] = modules["accuracy"].compute(predictions=norm.tolist(), references=references)["accuracy"]
    if calibrated is not None:
        for module in modules.values():
            for key, value in module.compute(predictions=calibrated.tolist(), references=references).items():
                results[f"{key}_calibrated"] = value
    results["num_examples"] = len(references)
    return results


def score_answers(ctx, prompt: Prompt, rows, prefix: str, where: str, stats: ScoringStats) -> tuple[dict, list[dict]]:
    """Metrics and per-example prediction records of one split of a classification or multiple-choice task."""
    config, task = prompt.config, ctx.cfg.task
    records = rows.to_list()
    texts = [prompt.text(row, f"{where} row {i + 1}") for i, row in enumerate(records)]
    contexts = [prefix + text for text in texts]
    answers = [prompt.answers(row) for row in records]
    pairs = [(context, config.delimiter + answer) for context, options in zip(contexts, answers) for answer in options]
    calibrate = config.calibration == "contextual"
    if calibrate:
        neutral = [prefix + prompt.text(row, f"{where} row {i + 1}", content_free=True) for i, row in enumerate(records)]
        pairs += [(context, config.delimiter + answer) for context, options in zip(neutral, answers) for answer in options]
    log.info("%s: %d examples, %d (prompt, answer) requests; first prompt: %r", where, len(records), len(pairs),
             pairs[0][0] + pairs[0][1] if pairs else "")
    batch_size = ctx.cfg.trainer.eval_batch_size or 4 * ctx.cfg.trainer.batch_size
    split_stats = ScoringStats()
    results = loglikelihood(ctx.model, ctx.tokenizer, pairs, batch_size, ctx.accelerator, split_stats)
    stats.add(split_stats)
    log.info("%s: scored %d requests (%d unique), %d tokens in %.1f s: %.0f tokens/s%s", where, split_stats.requests,
             split_stats.scored, split_stats.tokens, split_stats.seconds, split_stats.tokens_per_second,
             f"; {split_stats.truncated} cut from the left to fit the context window" if split_stats.truncated else "")
    width = max(len(options) for options in answers)
    scores = np.full((len(records), width), -np.inf)
    per_char = np.full((len(records), width), -np.inf)
    neutral_scores = np.zeros((len(records), width))
    greedy = np.zeros((len(records), width), dtype=bool)
    position = 0
    for r, options in enumerate(answers):
        for c, answer in enumerate(options):
            scores[r, c], greedy[r, c] = results[position]
            per_char[r, c] = scores[r, c] / len(answer)  # characters of the answer, without the delimiter (the harness's acc_norm)
            position += 1
    if calibrate:
        for r, options in enumerate(answers):
            for c in range(len(options)):
                neutral_scores[r, c] = results[position][0]
                position += 1
    predictions, norm = np.argmax(scores, axis=-1), np.argmax(per_char, axis=-1)
    calibrated = calibrated_predictions(scores, neutral_scores) if calibrate else None
    references = [int(row["label"]) for row in records]
    metrics = _metrics(task, references, predictions, norm, calibrated)
    names = list(task.labels)

    def name(index: int) -> str:
        return names[index] if index < len(names) else str(index)

    lines = []
    for r, (row, options) in enumerate(zip(records, answers)):
        line = {"index": r}
        if "id" in row:
            line["id"] = row["id"]
        line.update(prompt=texts[r], label=name(references[r]), prediction=name(int(predictions[r])),
                    prediction_norm=name(int(norm[r])))
        if calibrate:
            line["prediction_calibrated"] = name(int(calibrated[r]))
        line["candidates"] = []
        for c, answer in enumerate(options):
            candidate = {"label": name(c), "answer": answer, "loglikelihood": float(scores[r, c]), "is_greedy": bool(greedy[r, c]),
                         "chars": len(answer), "loglikelihood_per_char": float(per_char[r, c])}
            if calibrate:
                candidate["content_free_loglikelihood"] = float(neutral_scores[r, c])
            line["candidates"].append(candidate)
        lines.append(line)
    return metrics, lines


def generate_answers(ctx, prompt: Prompt, rows, prefix: str, where: str, stats: ScoringStats) -> tuple[dict, list[dict]]:
    """Metrics and per-example records of one split of a span QA task: greedy answers, exact match / F1."""
    config, task = prompt.config, ctx.cfg.task
    records = rows.to_list()
    texts = [prompt.text(row, f"{where} row {i + 1}") for i, row in enumerate(records)]
    prompts = [prefix + text for text in texts]
    log.info("%s: %d examples, greedy answers of up to %d tokens; first prompt: %r", where, len(records),
             config.max_new_tokens, prompts[0] if prompts else "")
    batch_size = ctx.cfg.trainer.eval_batch_size or 4 * ctx.cfg.trainer.batch_size
    split_stats = ScoringStats()
    generated = greedy_until(ctx.model, ctx.tokenizer, prompts, config.max_new_tokens, list(config.stop), batch_size,
                             ctx.accelerator, split_stats)
    stats.add(split_stats)
    log.info("%s: generated for %d prompts, %d tokens in %.1f s: %.0f tokens/s", where, split_stats.requests,
             split_stats.tokens, split_stats.seconds, split_stats.tokens_per_second)
    answers = [text.strip() for text in generated]
    references = [list(row["answers"]["text"]) for row in records]
    metrics = {}
    for module in load_metrics(task.metrics):
        metrics.update(module.compute(predictions=answers, references=references))
    metrics["num_examples"] = len(records)
    lines = [{"index": r, **({"id": row["id"]} if "id" in row else {}), "prompt": text, "prediction": answer,
              "generated": output, "answers": gold}
             for r, (row, text, answer, output, gold) in enumerate(zip(records, texts, answers, generated, references))]
    return metrics, lines


def write_lines(path, lines: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for line in lines:
            handle.write(json.dumps(line, ensure_ascii=False) + "\n")


def run(cfg) -> Outcome:
    task = cfg.task
    prompt = check_prompt(cfg)
    shots = prompt.config.shots
    ctx = setup(cfg, train_split=task.train_split if shots else None, eval_splits=list(task.eval_splits), weights="language_model")
    accelerator = ctx.accelerator
    ctx.model.to(accelerator.device)
    seed = prompt.config.shot_seed if prompt.config.shot_seed is not None else cfg.seed
    train_rows = ctx.data.examples.get(task.train_split) if shots else None
    train_where = ctx.data.stats[task.train_split]["origin"] if shots else task.train_split
    prefix, shown = prompt.demonstrations(train_rows, seed, train_where)
    if shots:
        log.info("%d-shot: the same %d train examples (indices %s, seed %d) before every prompt", shots, shots,
                 ", ".join(map(str, shown)), seed)
    log.info("task %s: zero-shot scoring of %s (%.1fM parameters) on %s; %s", task.name, cfg.model.name_or_path,
             sum(p.numel() for p in ctx.model.parameters()) / 1e6, ", ".join(task.eval_splits), accelerator.device)
    score = generate_answers if prompt.generative else score_answers
    stats, results, files = ScoringStats(), {}, {}
    for split in task.eval_splits:
        where = ctx.data.stats[split]["origin"]
        results[split], lines = score(ctx, prompt, ctx.data.examples[split], prefix, where, stats)
        if accelerator.is_main_process:
            path = ctx.run_dir / "predictions" / f"{split}.jsonl"
            write_lines(path, lines)
            files[split] = str(path)
        log.info("%s: %s", split, " ".join(f"{k}={v:.4f}" for k, v in results[split].items() if k != "num_examples"))
    first = next(iter(results))
    metrics = {
        "task": task.name,
        "mode": "zeroshot",
        "main_metric": task.main_metric,
        "main_metric_mode": main_metric_mode(task),
        "eval": results[first],
        "eval_splits": results,
        "prompt": {
            "template": prompt.config.template, "choices": prompt.choices, "delimiter": prompt.config.delimiter,
            "shots": shots, "shot_seed": seed if shots else None, "demonstration_indices": shown,
            "calibration": prompt.config.calibration,
        },
        "scoring": stats.as_dict(),
        "predictions": files,
        "model": ctx.model_source,
        "data": ctx.data.stats,
    }
    summary = split_lines(results)
    summary.append(f"{shots}-shot: {stats.requests} requests, {stats.tokens} tokens in {stats.seconds:.1f} s "
                   f"({stats.tokens_per_second:.0f} tokens/s)")
    summary.append("predictions/<split>.jsonl: every candidate's log-likelihood per example")
    return Outcome(ctx, metrics, summary)
