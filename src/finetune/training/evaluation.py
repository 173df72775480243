"""Score a model on a full split: per-example outputs in row order, each example counted once.

Outputs are gathered across processes with `gather_for_metrics`, which drops the samples that
distributed sharding duplicated to even out the last batch; every example carries its row (its
input format's `row_key`: `index`, or `feature_index` for span windows), so outputs land in row
order whatever order the loader and the processes used. The same outputs feed the metrics
(training, `mode=evaluate`) and the prediction rows (`mode=predict`, `finetune.load`).

Each head names its evaluator (`Head.evaluator`), an entry of EVALUATORS with one protocol:
`outputs` (gather a split), `metric_arguments` (what a metric of a given input kind is fed, see
finetune.metrics) and `prediction_rows`:
- `classes`: one score per class or candidate (a scalar for regression) per example;
- `spans`: start/end scores per window, turned into one answer string per example;
- `tokens`: per language-model block, the summed NLL and count of its predicted tokens, and the
  predicted and target token at every scored position (perplexity, next-token accuracy).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from finetune.data.blocks import IGNORE_INDEX
from finetune.data.span import postprocess, span_args
from finetune.metrics import load_metric, metric_spec


@dataclass
class SplitOutputs:
    """What a model made of every example of a split, in row order."""

    scores: np.ndarray | None = None  # classes: (examples, classes or candidates); regression: (examples,)
    answers: list[str] | None = None  # spans: the answer string of each example
    references: list | None = None  # gold labels (class ids, scores, answer lists); None when unlabelled
    # tokens: per block, summed NLL and predicted-token count; per scored token (block order), the
    # predicted id (`next_tokens`) and the target id (`references`).
    nll: np.ndarray | None = None
    token_counts: np.ndarray | None = None
    next_tokens: np.ndarray | None = None


class SingleProcess:
    """The parts of an `Accelerator` that scoring uses, for inference outside a run (one process)."""

    def gather_for_metrics(self, tensors):
        return tensors

    def pad_across_processes(self, tensor, **kwargs):
        return tensor

    def autocast(self):
        return nullcontext()

    def unwrap_model(self, model):
        return model


def softmax(scores: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64; masked candidates (float32 min) get probability 0."""
    scores = np.asarray(scores, dtype=np.float64)
    shifted = scores - scores.max(axis=-1, keepdims=True)
    weights = np.exp(shifted)
    return weights / weights.sum(axis=-1, keepdims=True)


def _device_of(model) -> torch.device:
    return next(model.parameters()).device


def _gathered_by_row(accelerator, model, loader, row_key: str, pad_dim: int | None):
    """{row: scores} (and {row: label} when batches carry labels) over every batch of `loader`, in eval mode.
    `pad_dim`: the dimension to pad to a common size across processes before gathering (None: none)."""
    was_training = model.training
    model.eval()
    device = _device_of(model)
    scores, references = {}, {}
    for batch in loader:
        batch = {key: value.to(device) for key, value in batch.items()}
        labels = batch.pop("labels", None)
        rows = batch.pop(row_key)
        with accelerator.autocast():
            logits = model(**batch)["logits"].float()
        if logits.dim() == 2 and logits.shape[-1] == 1:  # regression
            logits = logits.squeeze(-1)
        if pad_dim is not None and logits.dim() > pad_dim:  # processes may hold different numbers of candidates / lengths
            logits = accelerator.pad_across_processes(logits, dim=pad_dim, pad_index=torch.finfo(logits.dtype).min)
        gathered = accelerator.gather_for_metrics((logits, rows) if labels is None else (logits, rows, labels))
        row_ids = gathered[1].cpu().tolist()
        scores.update(zip(row_ids, gathered[0].cpu().numpy()))
        if labels is not None:
            references.update(zip(row_ids, gathered[2].cpu().tolist()))
    model.train(was_training)
    return scores, references


class Evaluator:
    metric_inputs: tuple = ()  # the input kinds of the metrics it can feed (finetune.metrics MetricSpec.inputs)
    predicts = True  # it makes one prediction row per example

    def outputs(self, accelerator, model, loader, features=None, examples=None) -> SplitOutputs:
        raise NotImplementedError

    def metric_arguments(self, head, outputs: SplitOutputs, inputs: str) -> dict:
        raise NotImplementedError

    def count(self, outputs: SplitOutputs) -> int:
        return len(outputs.references)

    def prediction_rows(self, outputs: SplitOutputs, labels: list[str] | None, ids: list) -> list[dict]:
        raise NotImplementedError


class ClassEvaluator(Evaluator):
    """Raw scores per example: class logits, candidate scores or a regression score."""

    metric_inputs = ("labels",)

    @torch.no_grad()
    def outputs(self, accelerator, model, loader, features=None, examples=None) -> SplitOutputs:
        scores, references = _gathered_by_row(accelerator, model, loader, "index", pad_dim=1)
        count = len(features) if features is not None else len(scores)
        if sorted(scores) != list(range(count)):
            raise RuntimeError(f"evaluation gathered {len(scores)} examples for a split of {count}")
        ordered = [scores[i] for i in range(count)]
        if ordered and np.ndim(ordered[0]) == 1:  # pad candidate lists of different lengths
            width = max(len(s) for s in ordered)
            floor = np.finfo(np.float32).min
            ordered = [np.pad(s, (0, width - len(s)), constant_values=floor) for s in ordered]
        return SplitOutputs(
            scores=np.stack(ordered) if ordered else np.zeros((0,), dtype=np.float32),
            references=[references[i] for i in range(count)] if references else None,
        )

    def metric_arguments(self, head, outputs, inputs):
        predictions = head.predictions(torch.from_numpy(outputs.scores)).reshape(-1).tolist()
        return {"predictions": predictions, "references": outputs.references}

    def prediction_rows(self, outputs, labels, ids):
        """`prediction` (label name, or the score for regression), and for classes `probability` of the
        prediction and `probabilities` of every label; `label` when the split has one."""
        if labels is None:
            rows = [{"id": ids[i], "prediction": float(score)} for i, score in enumerate(outputs.scores.reshape(-1))]
        else:
            rows = []
            for i, probs in enumerate(softmax(outputs.scores)):
                best = int(np.argmax(outputs.scores[i]))
                rows.append({"id": ids[i], "prediction": labels[best], "probability": float(probs[best]),
                             "probabilities": {name: float(p) for name, p in zip(labels, probs)}})
        for row, reference in zip(rows, outputs.references or ()):
            row["label"] = labels[reference] if labels is not None else float(reference)
        return rows


class SpanEvaluator(Evaluator):
    """Extractive QA: start/end scores of every window, then one answer string per example.

    Windows have different padded lengths on different processes, so scores are padded to a common
    length before gathering. Every process post-processes the same gathered scores, so all ranks
    report identical answers."""

    metric_inputs = ("answers",)

    @torch.no_grad()
    def outputs(self, accelerator, model, loader, features, examples) -> SplitOutputs:
        args = span_args(accelerator.unwrap_model(model).head.args)
        scores, _ = _gathered_by_row(accelerator, model, loader, "feature_index", pad_dim=1)
        rows = features["feature_index"]  # row -> index, whatever order the loader used
        if sorted(scores) != sorted(rows):
            raise RuntimeError(f"span evaluation gathered {len(scores)} windows for {len(features)} features")
        ordered = [scores[i] for i in rows]
        answers = postprocess(
            examples["id"], examples["context"], features["example_id"], features["offset_mapping"],
            [s[:, 0] for s in ordered], [s[:, 1] for s in ordered],
            n_best=args["n_best"], max_answer_length=args["max_answer_length"],
        )
        references = [list(a["text"]) for a in examples["answers"]] if "answers" in examples.column_names else None
        return SplitOutputs(answers=[answers[i] for i in examples["id"]], references=references)

    def metric_arguments(self, head, outputs, inputs):
        return {"predictions": outputs.answers, "references": outputs.references}

    def prediction_rows(self, outputs, labels, ids):
        rows = [{"id": ids[i], "prediction": answer} for i, answer in enumerate(outputs.answers)]
        for row, reference in zip(rows, outputs.references or ()):
            row["label"] = reference[0] if reference else ""
        return rows


class TokenEvaluator(Evaluator):
    """Language modelling: every block (or strided window) scored once, gathered across processes.

    Blocks all have task.max_length tokens, so per-block tensors gather without padding;
    `gather_for_metrics` drops the blocks sharding repeated, and the block `index` checks that each
    block of the split was counted exactly once. Perplexity reads the per-block NLL sums and counts;
    accuracy compares the predicted next token with the target at every scored position.
    """

    metric_inputs = ("tokens", "next_tokens")
    predicts = False

    @torch.no_grad()
    def outputs(self, accelerator, model, loader, features=None, examples=None) -> SplitOutputs:
        unwrapped = accelerator.unwrap_model(model)
        was_training = unwrapped.training
        unwrapped.eval()
        device = _device_of(unwrapped)
        nll, counts, predicted, targets = {}, {}, {}, {}
        for batch in loader:
            batch = {key: value.to(device) for key, value in batch.items()}
            index = batch.pop("index")
            with accelerator.autocast():
                outputs = unwrapped.head.score_tokens(unwrapped.backbone, batch["input_ids"], batch["labels"])
            gathered = accelerator.gather_for_metrics((*outputs, index))
            block_nll, block_counts, block_predicted, block_targets, rows = (t.cpu() for t in gathered)
            for j, row in enumerate(rows.tolist()):
                nll[row], counts[row] = float(block_nll[j]), int(block_counts[j])
                keep = block_targets[j] != IGNORE_INDEX
                predicted[row], targets[row] = block_predicted[j][keep].numpy(), block_targets[j][keep].numpy()
        unwrapped.train(was_training)
        count = len(features) if features is not None else len(nll)
        if sorted(nll) != list(range(count)):
            raise RuntimeError(f"evaluation gathered {len(nll)} blocks for a split of {count}")
        return SplitOutputs(
            nll=np.array([nll[i] for i in range(count)], dtype=np.float64),
            token_counts=np.array([counts[i] for i in range(count)], dtype=np.int64),
            next_tokens=np.concatenate([predicted[i] for i in range(count)]),
            references=np.concatenate([targets[i] for i in range(count)]),
        )

    def metric_arguments(self, head, outputs, inputs):
        if inputs == "tokens":
            return {"nll": outputs.nll.tolist(), "tokens": outputs.token_counts.tolist()}
        return {"predictions": outputs.next_tokens.tolist(), "references": outputs.references.tolist()}

    def count(self, outputs):
        return len(outputs.nll)  # blocks


EVALUATORS: dict[str, Evaluator] = {"classes": ClassEvaluator(), "spans": SpanEvaluator(), "tokens": TokenEvaluator()}


def evaluator_of(model_or_head) -> Evaluator:
    return EVALUATORS[model_or_head.evaluator]


def split_outputs(accelerator, model, loader, features=None, examples=None) -> SplitOutputs:
    head = accelerator.unwrap_model(model).head
    return evaluator_of(head).outputs(accelerator, model, loader, features, examples)


def compute_metrics(head, outputs: SplitOutputs, metric_names) -> dict:
    """The task's metrics over every example; `num_examples` counts examples (language models: blocks)."""
    if outputs.references is None:
        raise ValueError("the split has no labels to score against")
    evaluator = evaluator_of(head)
    results = {}
    for name in metric_names:
        metric = load_metric(name, keep_in_memory=True)
        metric.add_batch(**evaluator.metric_arguments(head, outputs, metric_spec(name).reads(evaluator.metric_inputs)))
        results.update(metric.compute())
    results["num_examples"] = evaluator.count(outputs)
    return results


def evaluate_split(accelerator, model, loader, metric_names, features=None, examples=None) -> dict:
    outputs = split_outputs(accelerator, model, loader, features, examples)
    return compute_metrics(accelerator.unwrap_model(model).head, outputs, metric_names)


def load_metrics(names):
    return [load_metric(name, keep_in_memory=True) for name in names]
