"""Local `evaluate` metric modules, loaded by path so that no run needs the Hub.

Each metric lives in a directory whose script has the directory's name, which is the layout
`evaluate.load(<dir>)` accepts. Output keys match the Hub's `glue` / `squad` metrics.
"""

from pathlib import Path

import evaluate

METRICS_DIR = Path(__file__).parent
AVAILABLE = sorted(p.name for p in METRICS_DIR.iterdir() if (p / f"{p.name}.py").is_file())

# Which keys each module reports, so a task's `main_metric` can be checked before training.
KEYS = {
    "accuracy": ["accuracy"],
    "f1": ["f1"],
    "matthews_correlation": ["matthews_correlation"],
    "pearson_spearmanr": ["pearson", "spearmanr"],
    "squad_v1": ["exact_match", "f1"],
    "perplexity": ["perplexity", "nll_per_token"],
}
# Metrics that read token-level outputs (the lm head's evaluator); the others read predictions.
TOKEN_METRICS = ("perplexity",)
LOWER_IS_BETTER = ("perplexity", "nll_per_token")


def load_metric(name: str, **kwargs) -> evaluate.EvaluationModule:
    """Load one of our metric modules by name from its directory (works offline)."""
    if name not in AVAILABLE:
        raise ValueError(f"unknown metric '{name}'; available: {', '.join(AVAILABLE)}")
    return evaluate.load(str(METRICS_DIR / name), **kwargs)
