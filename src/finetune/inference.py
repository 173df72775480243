"""Predictions from a fine-tuned model: one path for `mode=predict`, `finetune.load` and the pipelines.

`predict_rows` turns a model's outputs on a split into what a user reads (label names and
probabilities, scores, answers); `mode=predict` calls it on a task's split, and `Predictor` on the
inputs a user passes, after building the same standardised rows the data pipeline builds from
files. Everything between is the framework's own code: `featurize` (the tokenizer's input
template, both orders for similarity, span windows with stride), the evaluation loader and the
head's collator, the evaluator's outputs (candidate softmax scores, n-best span decoding). So every way
of predicting gives the numbers evaluation gives.

    predictor = finetune.load("<run dir>/model")       # or <run dir>/checkpoints/step-N
    predictor.predict(("A man plays a guitar.", "Someone plays music."))
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path

from finetune.errors import InputError, ModelError
from finetune.training.evaluation import SingleProcess, SplitOutputs, evaluator_of

# The evaluation batch of a run with default settings (trainer.eval_batch_size = 4 x batch_size):
# the same batches give bit-identical numbers; other batch shapes differ by float32 rounding only.
DEFAULT_BATCH_SIZE = 128


def predict_rows(accelerator, model, loader, features, examples, labels: list[str] | None) -> tuple[SplitOutputs, list[dict]]:
    """The one prediction path: a split's outputs and its prediction rows (the head's evaluator,
    finetune.training.evaluation): `id`, `prediction`, and what the evaluator adds."""
    evaluator = evaluator_of(accelerator.unwrap_model(model).head)
    outputs = evaluator.outputs(accelerator, model, loader, features, examples)
    ids = list(examples["id"]) if "id" in examples.column_names else list(range(len(examples)))
    return outputs, evaluator.prediction_rows(outputs, labels, ids)


# ---------------------------------------------------------------------------------------------
# Inputs as a user writes them -> the standardised rows of the data pipeline (finetune.data.columns)


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

        from finetune.data.input_formats import FORMATS
        from finetune.models.heads import HEADS

        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = model.eval().to(device)
        self.tokenizer = tokenizer
        self.manifest = manifest
        self.head = manifest["head"]
        self.head_cls = HEADS[self.head]
        self.labels = manifest.get("labels")
        self.input_format = FORMATS[self.head_cls.format_for(manifest.get("head_args") or {})]
        self.roles = self.head_cls.input_roles(manifest.get("input_roles"))
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
        if self.input_format.needs_row_ids:  # e.g. span windows are matched back to their question by id
            columns["id"] = [str(i) for i in range(len(next(iter(columns.values()))))]
        return Dataset.from_dict(columns), single

    def predict_examples(self, rows, batch_size: int | None = None) -> list[dict]:
        """Predictions for standardised rows, through featurize -> eval loader -> predict_rows."""
        from finetune.config import TrainerConfig
        from finetune.data.pipeline import InputSettings
        from finetune.training.batching import build_eval_loader

        if len(rows) == 0:
            return []
        if self.labels is not None:
            self.head_cls.check_inputs(rows, self.labels)
        inputs = InputSettings(self.manifest["max_length"], dict(self.manifest.get("head_args") or {}))
        with _quiet_datasets():
            features, _ = self.input_format.featurize(rows, self.tokenizer, inputs, training=False, where="inputs")
        loader_cfg = TrainerConfig(eval_batch_size=batch_size or self.batch_size, num_workers=0)
        loader = build_eval_loader(loader_cfg, features, self.tokenizer, self.input_format.name, inputs.max_length, seed=0,
                                   on_cuda=self.device.type == "cuda")
        _, predictions = predict_rows(SingleProcess(), self.model, loader, features, rows, self.labels)
        return [self._tidy(row, rows[i]) for i, row in enumerate(predictions)]

    def predict(self, inputs, batch_size: int | None = None):
        """Predictions for one example (a dict back) or a list of them (a list back)."""
        rows, single = self.examples(inputs)
        predictions = self.predict_examples(rows, batch_size)
        return predictions[0] if single else predictions

    __call__ = predict

    def _tidy(self, row: dict, example: dict) -> dict:
        """What a caller needs of a prediction row: no row id, and what the head adds (e.g. the chosen candidate)."""
        row = {key: value for key, value in row.items() if key != "id"}
        return self.head_cls.tidy_prediction(row, example, self.labels)


def load(path: str | Path, device=None, batch_size: int = DEFAULT_BATCH_SIZE) -> Predictor:
    """A `Predictor` for a run's exported `model/` directory or one of its `checkpoints/step-N`."""
    from finetune.models.artifacts import open_trained, trained_manifest

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
