"""Pearson and Spearman correlation (GLUE's STS-B metric) as a local `evaluate` module."""

import datasets
import evaluate
import numpy as np
from scipy.stats import pearsonr, spearmanr


class PearsonSpearmanr(evaluate.Metric):
    keys = ("pearson", "spearmanr")  # what it reports
    inputs = ("labels",)  # what it can read (finetune.metrics)
    higher_is_better = True

    def _info(self):
        return evaluate.MetricInfo(
            description="Pearson and Spearman rank correlation of predicted and reference scores.",
            citation="",
            inputs_description="predictions, references: real-valued scores",
            features=datasets.Features(
                {"predictions": datasets.Value("float64"), "references": datasets.Value("float64")}
            ),
        )

    def _compute(self, predictions, references):
        predictions, references = np.asarray(predictions), np.asarray(references)
        if np.std(predictions) == 0 or np.std(references) == 0:
            # Correlation is undefined for a constant; report no correlation instead of NaN.
            return {"pearson": 0.0, "spearmanr": 0.0}
        return {
            "pearson": float(pearsonr(predictions, references)[0]),
            "spearmanr": float(spearmanr(predictions, references)[0]),
        }
