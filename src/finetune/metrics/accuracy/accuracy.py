"""Accuracy as a local `evaluate` module (the Hub copy cannot be fetched offline)."""

import datasets
import evaluate
import numpy as np


class Accuracy(evaluate.Metric):
    keys = ("accuracy",)  # what it reports
    inputs = ("labels", "next_tokens")  # what it can read (finetune.metrics)
    higher_is_better = True

    def _info(self):
        return evaluate.MetricInfo(
            description="Fraction of predictions equal to the reference label.",
            citation="",
            inputs_description="predictions, references: class ids",
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references):
        return {"accuracy": float(np.mean(np.asarray(predictions) == np.asarray(references)))}
