"""Predictions per example from a model's split outputs: label names, probabilities, scores, answers.

`mode=predict` writes these rows; the same function turns any SplitOutputs (finetune.training.
evaluation) into what a user reads, so every path that predicts gives the same answers.
"""

from __future__ import annotations

import numpy as np

from finetune.training.evaluation import SplitOutputs


def softmax(scores: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64; masked candidates (float32 min) get probability 0."""
    scores = np.asarray(scores, dtype=np.float64)
    shifted = scores - scores.max(axis=-1, keepdims=True)
    weights = np.exp(shifted)
    return weights / weights.sum(axis=-1, keepdims=True)


def prediction_rows(outputs: SplitOutputs, labels: list[str] | None, ids: list | None = None) -> list[dict]:
    """One dict per example: `id`, `prediction` (label name, score or answer text), and for classes
    `probability` of the prediction and `probabilities` of every label; `label` when the split has one."""
    count = len(outputs.answers) if outputs.answers is not None else len(outputs.scores)
    ids = list(ids) if ids is not None else list(range(count))
    rows = []
    if outputs.answers is not None:
        for i, answer in enumerate(outputs.answers):
            rows.append({"id": ids[i], "prediction": answer})
    elif labels is None:  # regression
        for i, score in enumerate(outputs.scores.reshape(-1)):
            rows.append({"id": ids[i], "prediction": float(score)})
    else:
        probabilities = softmax(outputs.scores)
        for i, probs in enumerate(probabilities):
            best = int(np.argmax(outputs.scores[i]))
            rows.append({
                "id": ids[i], "prediction": labels[best], "probability": float(probs[best]),
                "probabilities": {name: float(p) for name, p in zip(labels, probs)},
            })
    if outputs.references is not None:
        for row, reference in zip(rows, outputs.references):
            if outputs.answers is not None:
                row["label"] = reference[0] if reference else ""
            else:
                row["label"] = labels[reference] if labels is not None else float(reference)
    return rows
