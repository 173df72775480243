"""Predictions from a fine-tuned model: one path for `mode=predict`, `finetune.load` and the pipelines.

`predict_rows` turns a model's outputs on a split into what a user reads (label names and
probabilities, scores, answers); `mode=predict` calls it on a task's split, and `Predictor` on the
inputs a user passes, after building the same standardised rows the data pipeline builds from
files. Everything between is the framework's own code: `featurize` (the tokenizer's input
template, both orders for similarity, span windows with stride), the evaluation loader and the
head's collator, `split_outputs` (candidate softmax scores, n-best span decoding). So every way
of predicting gives the numbers evaluation gives.

    predictor = finetune.load("<run dir>/model")       # or <run dir>/checkpoints/step-N
    predictor.predict(("A man plays a guitar.", "Someone plays music."))
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from finetune.errors import InputError, ModelError
from finetune.training.evaluation import SingleProcess, SplitOutputs, split_outputs

TARGET_ROLES = ("label", "answers")  # what a model predicts; never an input
# The evaluation batch of a run with default settings (trainer.eval_batch_size = 4 x batch_size):
# the same batches give bit-identical numbers; other batch shapes differ by float32 rounding only.
DEFAULT_BATCH_SIZE = 128


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


def predict_rows(accelerator, model, loader, features, examples, labels: list[str] | None) -> tuple[SplitOutputs, list[dict]]:
    """The one prediction path: a split's outputs (finetune.training.evaluation) and its prediction rows."""
    outputs = split_outputs(accelerator, model, loader, features, examples)
    ids = examples["id"] if "id" in examples.column_names else None
    return outputs, prediction_rows(outputs, labels, ids)


# ---------------------------------------------------------------------------------------------
# Inputs as a user writes them -> the standardised rows of the data pipeline (finetune.data.columns)


def input_roles(head_cls, trained_with: list[str] | None = None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(required, optional) roles a head reads as input, in the order a tuple gives them.

    `trained_with` (the manifest's `input_roles`) fixes the optional ones: a classifier trained on
    single texts takes no pair, one trained on pairs needs them.
    """
    required = tuple(r for r in head_cls.required_roles if r not in TARGET_ROLES and r != "id")
    optional = tuple(r for r in head_cls.optional_roles if r not in TARGET_ROLES and r != "id")
    if trained_with is not None:
        required += tuple(r for r in optional if r in trained_with)
        optional = ()
    return required, optional


def describe_input(head_name: str, required: tuple, optional: tuple) -> str:
    """What one example looks like for this model, for error messages."""
    roles = required + optional
    forms = (["a string"] if len(required) == 1 else []) + ([f"a ({', '.join(roles)}) tuple"] if len(roles) > 1 else [])
    keys = ", ".join(repr(r) for r in roles) + (f" ({', '.join(repr(r) for r in optional)} optional)" if optional else "")
    return f"a '{head_name}' model reads {', '.join(forms)} or a dict with key{'s' if len(roles) > 1 else ''} {keys}"


def _is_example(item) -> bool:
    return isinstance(item, (str, dict, tuple))


def _check_text(value, role: str, where: str) -> str:
    if not isinstance(value, str):
        raise InputError(f"{where}: '{role}' must be a string, got {type(value).__name__}")
    if not value.strip():
        raise InputError(f"{where}: '{role}' is empty")
    return value


def _example(item, describe: str, required: tuple, optional: tuple, where: str) -> dict:
    roles = required + optional
    if isinstance(item, dict):
        unknown = [key for key in item if key not in roles]
        if unknown:
            raise InputError(f"{where}: unknown key(s) {unknown}; {describe}")
        values = {role: item[role] for role in roles if item.get(role) is not None}
    elif isinstance(item, str):
        values = {roles[0]: item}
    elif isinstance(item, tuple):
        if not len(required) <= len(item) <= len(roles):
            raise InputError(f"{where}: a tuple of {len(item)}; {describe}")
        values = dict(zip(roles, item))
    else:
        raise InputError(f"{where}: a {type(item).__name__}; {describe}")
    missing = [role for role in required if role not in values]
    if missing:
        given = "a single string" if isinstance(item, str) else f"no {', '.join(repr(r) for r in missing)}"
        raise InputError(f"{where}: {given}, but {describe}")
    for role, value in values.items():
        if role == "choices":
            if not isinstance(value, (list, tuple)) or not value:
                raise InputError(f"{where}: 'choices' must be a non-empty list of strings, got {type(value).__name__}")
            values[role] = [_check_text(choice, f"choices[{j}]", where) for j, choice in enumerate(value)]
        else:
            _check_text(value, role, where)
    return values


def parse_inputs(inputs, head_name: str, required: tuple, optional: tuple = ()) -> tuple[dict, bool]:
    """Columns (role -> values) of the examples in `inputs`, and whether `inputs` was one example.

    One example is a string, a tuple (roles in order) or a dict (role -> value); anything else
    iterable (a list, a generator, a pandas Series) is a batch of examples.
    """
    describe = describe_input(head_name, required, optional)
    single = _is_example(inputs)
    if single:
        items = [inputs]
    elif isinstance(inputs, Iterable):
        items = list(inputs)
    else:
        raise InputError(f"inputs: a {type(inputs).__name__}; {describe}, or a list of them")
    examples = [_example(item, describe, required, optional, "input" if single else f"input {i}") for i, item in enumerate(items)]
    columns = {role: [e[role] for e in examples] for role in required}
    for role in optional:
        given = [role in e for e in examples]
        if any(given) and not all(given):
            raise InputError(f"inputs: '{role}' is given for some examples and not others ({describe}): predict them in separate calls")
        if examples and all(given):
            columns[role] = [e[role] for e in examples]
    return columns, single


@contextmanager
def _quiet_datasets():
    """No `datasets.map` progress bar for every call (the training run's setup turns them off too)."""
    import datasets

    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled:
            datasets.enable_progress_bars()


class _TaskView:
    """The two task settings `featurize` reads, from the model's manifest (what it was trained with)."""

    def __init__(self, manifest: dict):
        self.max_length = manifest["max_length"]
        self.head_args = manifest.get("head_args") or {}


class Predictor:
    """A fine-tuned model with `predict(inputs)`: the task's natural inputs in, the framework's predictions out.

    One example per call gives one dict, a list gives a list (in input order, batched):
    - classification, entailment, similarity: `prediction` (label name), `probability`, `probabilities`;
      regression (STS-B): `prediction`, the score. Similarity models trained on both orders score both.
    - multiple choice: the same over candidate positions (`prediction` is the label name of the
      chosen position, e.g. "B"), plus `choice`, the chosen candidate's text.
    - span QA: `prediction`, the answer string cut out of the context (empty when none is valid).

    Inputs: the head's roles (`input_roles`) as a tuple in order or a dict: e.g. a string (or a
    (text, text_pair) tuple for a classifier trained on pairs); a (text, text_pair) tuple; a dict
    {"context": ..., "choices": [...]}; a (question, context) tuple. A head that generates text
    (an LM export) would add a `generate` method beside `predict` on the same model and tokenizer.
    """

    def __init__(self, model, tokenizer, manifest: dict, device=None, batch_size: int = DEFAULT_BATCH_SIZE):
        import torch

        from finetune.models.heads import HEADS

        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = model.eval().to(device)
        self.tokenizer = tokenizer
        self.manifest = manifest
        self.head = manifest["head"]
        self.head_cls = HEADS[self.head]
        self.labels = manifest.get("labels")
        self.input_format = self.head_cls.format_for(manifest.get("head_args") or {})
        self.roles = input_roles(self.head_cls, manifest.get("input_roles"))
        self.batch_size = batch_size

    def __repr__(self) -> str:
        return (f"Predictor(task={self.manifest.get('task')!r}, head={self.head!r}, labels={self.labels}, "
                f"device={self.device})")

    @property
    def device(self):
        return next(self.model.parameters()).device

    def examples(self, inputs) -> tuple[object, bool]:
        """(standardised rows as a `datasets.Dataset`, whether `inputs` was one example)."""
        from datasets import Dataset

        columns, single = parse_inputs(inputs, self.head, *self.roles)
        if self.head_cls.evaluator == "spans":  # windows are matched back to their question by id
            columns["id"] = [str(i) for i in range(len(next(iter(columns.values()))))]
        return Dataset.from_dict(columns), single

    def predict_examples(self, rows, batch_size: int | None = None) -> list[dict]:
        """Predictions for standardised rows, through featurize -> eval loader -> predict_rows."""
        from finetune.config import TrainerConfig
        from finetune.data.pipeline import featurize
        from finetune.training.batching import build_eval_loader

        if len(rows) == 0:
            return []
        labels = self._labels_for(rows)
        task = _TaskView(self.manifest)
        with _quiet_datasets():
            features, _ = featurize(rows, self.input_format, self.tokenizer, task, training=False, where="inputs")
        loader_cfg = TrainerConfig(eval_batch_size=batch_size or self.batch_size, num_workers=0)
        loader = build_eval_loader(loader_cfg, features, self.tokenizer, self.input_format, task.max_length, seed=0,
                                   on_cuda=self.device.type == "cuda")
        _, predictions = predict_rows(SingleProcess(), self.model, loader, features, rows, labels)
        return [self._tidy(row, rows, i) for i, row in enumerate(predictions)]

    def predict(self, inputs, batch_size: int | None = None):
        """Predictions for one example (a dict back) or a list of them (a list back)."""
        rows, single = self.examples(inputs)
        predictions = self.predict_examples(rows, batch_size)
        return predictions[0] if single else predictions

    __call__ = predict

    def _labels_for(self, rows) -> list[str] | None:
        if self.head_cls.input_format != "choices":
            return self.labels
        most = max(len(choices) for choices in rows["choices"])
        if most > len(self.labels):
            raise InputError(f"inputs: an example has {most} choices, but this model names {len(self.labels)} "
                             f"candidate positions ({', '.join(self.labels)})")
        return self.labels

    def _tidy(self, row: dict, rows, i: int) -> dict:
        """What a caller needs of a prediction row: no row id; for multiple choice, only the example's
        own candidates, and the chosen candidate's text."""
        row = {key: value for key, value in row.items() if key != "id"}
        if self.head_cls.input_format == "choices":
            choices = rows[i]["choices"]
            names = self.labels[: len(choices)]
            row["probabilities"] = {name: row["probabilities"][name] for name in names}
            row["choice"] = choices[names.index(row["prediction"])]
        return row


def load(path: str | Path, device=None, batch_size: int = DEFAULT_BATCH_SIZE) -> Predictor:
    """A `Predictor` for a run's exported `model/` directory or one of its `checkpoints/step-N`."""
    from finetune.models.task_model import open_trained, trained_manifest

    path = Path(path).expanduser()
    what = f"'{path}'"
    if not path.exists():
        raise ModelError(f"{what} does not exist (expected a run's model/ or checkpoints/step-N directory)")
    if trained_manifest(path, what) is None:
        raise ModelError(f"{what} is not a fine-tuned finetune model (no finetune.json): pass a run's model/ or "
                         f"checkpoints/step-N directory")
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # no "Loading weights" bar for a model of a few files
    try:
        model, tokenizer, manifest = open_trained(path, what)
    finally:
        if shown:
            hf_logging.enable_progress_bar()
    return Predictor(model, tokenizer, manifest, device=device, batch_size=batch_size)
