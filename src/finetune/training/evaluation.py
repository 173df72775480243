"""Score a model on a full evaluation split, each example counted exactly once.

Predictions are gathered across processes with `gather_for_metrics`, which drops the samples
that distributed sharding duplicated to even out the last batch.
"""

from __future__ import annotations

import torch

from finetune.metrics import load_metric


def load_metrics(names):
    return [load_metric(name, keep_in_memory=True) for name in names]


@torch.no_grad()
def evaluate_split(accelerator, model, loader, metric_names) -> dict:
    head = accelerator.unwrap_model(model).head
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
