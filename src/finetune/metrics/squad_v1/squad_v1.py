"""SQuAD v1.1 exact match and F1, following the official evaluation script's normalisation."""

import collections
import re
import string

import datasets
import evaluate


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation and the articles a/an/the, collapse whitespace."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, truth: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(truth))


def token_f1(prediction: str, truth: str) -> float:
    pred_tokens = normalize_answer(prediction).split()
    truth_tokens = normalize_answer(truth).split()
    common = collections.Counter(pred_tokens) & collections.Counter(truth_tokens)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision = overlap / len(pred_tokens)
    recall = overlap / len(truth_tokens)
    return 2 * precision * recall / (precision + recall)


class SquadV1(evaluate.Metric):
    keys = ("exact_match", "f1")  # what it reports
    inputs = ("answers",)  # what it can read (finetune.metrics)
    higher_is_better = True

    def _info(self):
        return evaluate.MetricInfo(
            description="SQuAD v1.1 exact match and token F1 (max over the gold answers), in percent.",
            citation="",
            inputs_description="predictions: answer strings; references: lists of gold answer strings",
            features=datasets.Features(
                {
                    "predictions": datasets.Value("string"),
                    "references": datasets.Sequence(datasets.Value("string")),
                }
            ),
        )

    def _compute(self, predictions, references):
        total = len(predictions)
        em = sum(max(exact_match(p, t) for t in truths) for p, truths in zip(predictions, references))
        f1 = sum(max(token_f1(p, t) for t in truths) for p, truths in zip(predictions, references))
        return {"exact_match": 100.0 * em / total, "f1": 100.0 * f1 / total}
