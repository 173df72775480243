"""Matthews correlation (GLUE's CoLA metric) as a local `evaluate` module."""

import datasets
import evaluate
from sklearn.metrics import matthews_corrcoef


class MatthewsCorrelation(evaluate.Metric):
    keys = ("matthews_correlation",)  # what it reports
    inputs = ("labels",)  # what it can read (finetune.metrics)
    higher_is_better = True

    def _info(self):
        return evaluate.MetricInfo(
            description="Matthews correlation coefficient between predictions and references.",
            citation="",
            inputs_description="predictions, references: class ids",
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references):
        return {"matthews_correlation": float(matthews_corrcoef(references, predictions))}
