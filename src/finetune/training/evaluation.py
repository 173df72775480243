"""Score a model on a full evaluation split, each example counted exactly once.

Predictions are gathered across processes with `gather_for_metrics`, which drops the samples
that distributed sharding duplicated to even out the last batch.
"""

from __future__ import annotations

import torch

from finetune.data.span import postprocess, span_args
from finetune.metrics import load_metric


def load_metrics(names):
    return [load_metric(name, keep_in_memory=True) for name in names]


@torch.no_grad()
def evaluate_split(accelerator, model, loader, metric_names, features=None, examples=None) -> dict:
    """`features`/`examples`: the split's tokenized windows and standardised rows (span QA only)."""
    head = accelerator.unwrap_model(model).head
    if head.input_format == "span":
        return evaluate_spans(accelerator, model, loader, metric_names, features, examples)
    metrics = load_metrics(metric_names)
    was_training = model.training
    model.eval()
    count = 0
    for batch in loader:
        labels = batch.pop("labels")
        with accelerator.autocast():
            logits = model(**batch)["logits"]
        predictions, references = accelerator.gather_for_metrics((head.predictions(logits), labels))
        count += len(references)
        for metric in metrics:
            metric.add_batch(predictions=predictions.cpu().tolist(), references=references.cpu().tolist())
    model.train(was_training)
    results = {}
    for metric in metrics:
        results.update(metric.compute())
    results["num_examples"] = count
    return results


@torch.no_grad()
def evaluate_spans(accelerator, model, loader, metric_names, features, examples) -> dict:
    """Extractive QA: gather start/end scores of every window, then answers per example.

    Windows have different padded lengths on different processes, so scores are padded to a
    common length before `gather_for_metrics`. Every process then post-processes the same
    gathered scores, so all ranks report identical metrics.
    """
    head = accelerator.unwrap_model(model).head
    args = span_args(head.args)
    was_training = model.training
    model.eval()
    scores = {}
    for batch in loader:
        batch.pop("labels", None)
        index = batch.pop("feature_index")
        with accelerator.autocast():
            logits = model(**batch)["logits"].float()
        logits = accelerator.pad_across_processes(logits, dim=1, pad_index=torch.finfo(logits.dtype).min)
        logits, index = accelerator.gather_for_metrics((logits, index))
        for i, row in zip(index.cpu().tolist(), logits.cpu().numpy()):
            scores[i] = row
    model.train(was_training)
    rows = features["feature_index"]  # row -> index, whatever order the loader used
    if sorted(scores) != sorted(rows):
        raise RuntimeError(f"span evaluation gathered {len(scores)} windows for {len(features)} features")
    ordered = [scores[i] for i in rows]
    answers = postprocess(
        examples["id"], examples["context"], features["example_id"], features["offset_mapping"],
        [s[:, 0] for s in ordered], [s[:, 1] for s in ordered],
        n_best=args["n_best"], max_answer_length=args["max_answer_length"],
    )
    references = [list(a["text"]) for a in examples["answers"]]
    predictions = [answers[i] for i in examples["id"]]
    results = {}
    for metric in load_metrics(metric_names):
        metric.add_batch(predictions=predictions, references=references)
        results.update(metric.compute())
    results["num_examples"] = len(predictions)
    return results
