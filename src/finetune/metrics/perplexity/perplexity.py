"""Perplexity as a local `evaluate` module: exp(mean negative log-likelihood per predicted token).

Inputs are per block (or strided window): the summed NLL of its predicted tokens and how many it
predicted, so the mean is over every predicted token of the split (not a mean of block means).
"""

import datasets
import evaluate
import numpy as np


class Perplexity(evaluate.Metric):
    keys = ("perplexity", "nll_per_token")  # what it reports
    inputs = ("tokens",)  # what it can read (finetune.metrics)
    higher_is_better = False

    def _info(self):
        return evaluate.MetricInfo(
            description="exp(total NLL / total predicted tokens) over a split, with the mean NLL per token.",
            citation="",
            inputs_description="nll: summed negative log-likelihood (nats) of a block's predicted tokens; tokens: how many",
            features=datasets.Features({"nll": datasets.Value("float64"), "tokens": datasets.Value("int64")}),
        )

    def _compute(self, nll, tokens):
        total = int(np.sum(tokens))
        if total == 0:
            raise ValueError("perplexity over zero predicted tokens")
        mean = float(np.sum(np.asarray(nll, dtype=np.float64)) / total)
        return {"perplexity": float(np.exp(mean)), "nll_per_token": mean}
