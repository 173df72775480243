"""Our local evaluate modules agree with scikit-learn / scipy and use the Hub's output keys."""

import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from finetune.metrics import AVAILABLE, load_metric

rng = np.random.default_rng(0)
LABELS = rng.integers(0, 2, 300)
PREDS = np.where(rng.random(300) < 0.7, LABELS, 1 - LABELS)


def test_all_modules_load_offline():
    assert set(AVAILABLE) >= {"accuracy", "f1", "matthews_correlation", "pearson_spearmanr", "squad_v1"}


def test_accuracy_matches_sklearn_over_batches():
    metric = load_metric("accuracy")
    for start in range(0, 300, 64):
        metric.add_batch(predictions=PREDS[start : start + 64], references=LABELS[start : start + 64])
    assert metric.compute() == {"accuracy": pytest.approx(accuracy_score(LABELS, PREDS))}


def test_f1_matches_sklearn():
    assert load_metric("f1").compute(predictions=PREDS, references=LABELS) == {"f1": pytest.approx(f1_score(LABELS, PREDS))}


def test_matthews_matches_sklearn():
    result = load_metric("matthews_correlation").compute(predictions=PREDS, references=LABELS)
    assert result == {"matthews_correlation": pytest.approx(matthews_corrcoef(LABELS, PREDS))}


def test_pearson_spearman_match_scipy():
    refs = rng.random(200) * 5
    preds = refs + rng.normal(0, 1, 200)
    result = load_metric("pearson_spearmanr").compute(predictions=preds, references=refs)
    assert result["pearson"] == pytest.approx(pearsonr(preds, refs)[0])
    assert result["spearmanr"] == pytest.approx(spearmanr(preds, refs)[0])


def test_constant_predictions_give_zero_correlation_not_nan():
    result = load_metric("pearson_spearmanr").compute(predictions=[1.0] * 5, references=[1, 2, 3, 4, 5])
    assert result == {"pearson": 0.0, "spearmanr": 0.0}


def test_squad_em_f1_hand_computed():
    metric = load_metric("squad_v1")
    result = metric.compute(
        predictions=["The Eiffel Tower", "in 1889", "Paris France"],
        references=[["Eiffel Tower"], ["1889", "the year 1889"], ["Paris"]],
    )
    # EM: 1 (articles dropped), 0, 0. F1: 1, 2*(1/2*1)/(1/2+1)=2/3, 2*(1/2*1)/(1.5)=2/3.
    assert result["exact_match"] == pytest.approx(100 / 3)
    assert result["f1"] == pytest.approx(100 * (1 + 2 / 3 + 2 / 3) / 3)
