"""Binary F1 of the positive class (GLUE's MRPC/QQP F1) as a local `evaluate` module."""

import datasets
import evaluate
from sklearn.metrics import f1_score


class F1(evaluate.Metric):
    keys = ("f1",)  # what it reports
    inputs = ("labels",)  # what it can read (finetune.metrics)
    higher_is_better = True

    def _info(self):
        return evaluate.MetricInfo(
            description="F1 score of the positive class (label 1), as reported on GLUE.",
            citation="",
            inputs_description="predictions, references: class ids (0/1)",
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references):
        return {"f1": float(f1_score(references, predictions, pos_label=1, average="binary", zero_division=0))}
