"""Do a run's exported model predict, through each way of loading it, what the framework predicts?

On the run's dev split (or its first `--examples` rows), the framework's predictions (what mode=predict
writes: setup -> evaluation loader -> finetune.inference.predict_rows) against
- `finetune.load(<run>/model).predict(...)` and `pipeline("finetune-text-classification")`;
- transformers' plain `pipeline("text-classification")` on the same directory (one order of a pair).

    python benchmarks/inference_parity.py <run dir> [--examples N]

Prints, per way: the mean predicted score (regression) or the largest class-probability difference
and the number of different labels (classification), and the largest difference to the framework.
Sequence heads only (the ones transformers' own pipeline could be used for).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf, open_dict


def framework_predictions(run_dir: Path, examples: int | None):
    """(prediction rows, standardised dev rows, labels) the way mode=predict computes them."""
    from finetune.inference import predict_rows
    from finetune.setup import setup
    from finetune.training.batching import eval_loaders

    cfg = OmegaConf.load(run_dir / "config.yaml")
    with open_dict(cfg):
        cfg.mode.name = "predict"
        cfg.model.name_or_path = str(run_dir / "model")
        cfg.model.tokenizer = None
        cfg.trainer.max_eval_samples = examples
        cfg.trainer.tracker = None
        cfg.paths.output_dir = str(run_dir / "parity")
    split = cfg.task.eval_splits[0]
    ctx = setup(cfg, train_split=None, eval_splits=[split], weights="fine_tuned")
    model = ctx.model.to(ctx.accelerator.device)
    loader = eval_loaders(cfg.trainer, ctx.data.evals, ctx.tokenizer, ctx.data.input_format, cfg.task.max_length, cfg.seed,
                          ctx.accelerator)[split]
    rows = ctx.data.examples[split]
    _, predictions = predict_rows(ctx.accelerator, model, loader, ctx.data.evals[split], rows, ctx.labels)
    return predictions, rows, ctx.labels


def as_matrix(predictions: list[dict], labels: list[str] | None) -> np.ndarray:
    if labels is None:
        return np.array([p["prediction"] for p in predictions], dtype=np.float64)
    return np.array([[p["probabilities"][name] for name in labels] for p in predictions], dtype=np.float64)


def plain_pipeline(model_dir: Path, rows, labels: list[str] | None) -> np.ndarray:
    from transformers import pipeline

    inputs = [{"text": a, "text_pair": b} for a, b in zip(rows["text"], rows["text_pair"])] if "text_pair" in rows.column_names \
        else list(rows["text"])
    if labels is None:
        classify = pipeline("text-classification", model=str(model_dir), device="cpu", function_to_apply="none")
        return np.array([out["score"] for out in classify(inputs, batch_size=1)], dtype=np.float64)
    classify = pipeline("text-classification", model=str(model_dir), device="cpu", top_k=None)
    return np.array([[{o["label"]: o["score"] for o in out}[name] for name in labels] for out in classify(inputs, batch_size=1)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--examples", type=int, default=None, help="the first N dev rows (default: all)")
    args = parser.parse_args()

    import finetune
    from transformers import pipeline

    model_dir = args.run_dir / "model"
    manifest = finetune.load(model_dir, device="cpu").manifest
    if manifest["head"] not in ("classification", "entailment", "similarity"):
        raise SystemExit(f"{model_dir} has a '{manifest['head']}' head: transformers has no pipeline to compare it with "
                         f"(tests/test_inference.py checks it against mode=predict)")
    framework, rows, labels = framework_predictions(args.run_dir, args.examples)
    inputs = [(a, b) for a, b in zip(rows["text"], rows["text_pair"])] if "text_pair" in rows.column_names else list(rows["text"])
    reference = as_matrix(framework, labels)
    ways = {
        "finetune.load(...).predict": as_matrix(finetune.load(model_dir, device="cpu").predict(inputs), labels),
        'pipeline("finetune-text-classification")': as_matrix(
            pipeline("finetune-text-classification", model=str(model_dir), device="cpu")(inputs), labels),
        'plain pipeline("text-classification")': plain_pipeline(model_dir, rows, labels),
    }
    print(f"{args.run_dir}: task {manifest['task']}, head {manifest['head']} {manifest['head_args']}, "
          f"first {len(reference)} rows of the dev split")
    if labels is None:
        print(f"  {'framework (mode=predict)':44s} mean score {reference.mean():.4f}")
    for name, values in ways.items():
        gap = float(np.abs(values - reference).max())
        if labels is None:
            print(f"  {name:44s} mean score {values.mean():.4f}  ratio framework/this {reference.mean() / values.mean():.3f}  "
                  f"max |score difference| {gap:.4g}")
        else:
            flips = int((values.argmax(-1) != reference.argmax(-1)).sum())
            print(f"  {name:44s} max |probability difference| {gap:.4g}  different labels {flips} of {len(reference)}")


if __name__ == "__main__":
    main()
