"""Score a model on a full split: per-example outputs in row order, each example counted once.

Outputs are gathered across processes with `gather_for_metrics`, which drops the samples that
distributed sharding duplicated to even out the last batch; every example carries its row
(`index`, or `feature_index` for span windows), so outputs land in row order whatever order the
loader and the processes used. The same outputs feed the metrics (training, `mode=evaluate`) and
the prediction files (`mode=predict`, `finetune.inference`).

Each head names its evaluator (`Head.evaluator`):
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
from finetune.metrics import TOKEN_METRICS, load_metric


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


def load_metrics(names):
    return [load_metric(name, keep_in_memory=True) for name in names]


def _device_of(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def class_outputs(accelerator, model, loader, features=None, examples=None) -> SplitOutputs:
    """Raw scores per example (and its label when the split has labels)."""
    was_training = model.training
    model.eval()
    device = _device_of(model)
    scores, references = {}, {}
    for batch in loader:
        batch = {key: value.to(device) for key, value in batch.items()}
        labels = batch.pop("labels", None)
        index = batch.pop("index")
        with accelerator.autocast():
            logits = model(**batch)["logits"].float()
        if logits.dim() == 2 and logits.shape[-1] == 1:  # regression
            logits = logits.squeeze(-1)
        if logits.dim() == 2:  # multiple choice: processes may hold different numbers of candidates
            logits = accelerator.pad_across_processes(logits, dim=1, pad_index=torch.finfo(logits.dtype).min)
        gathered = accelerator.gather_for_metrics((logits, index) if labels is None else (logits, index, labels))
        rows = gathered[1].cpu().tolist()
        for row, value in zip(rows, gathered[0].cpu().numpy()):
            scores[row] = value
        if labels is not None:
            references.update(zip(rows, gathered[2].cpu().tolist()))
    model.train(was_training)
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


@torch.no_grad()
def span_outputs(accelerator, model, loader, features, examples) -> SplitOutputs:
    """Extractive QA: gather start/end scores of every window, then one answer per example.

    Windows have different padded lengths on different processes, so scores are padded to a
    common length before `gather_for_metrics`. Every process then post-processes the same
    gathered scores, so all ranks report identical answers.
    """
    head = accelerator.unwrap_model(model).head
    args = span_args(head.args)
    was_training = model.training
    model.eval()
    device = _device_of(model)
    scores = {}
    for batch in loader:
        batch = {key: value.to(device) for key, value in batch.items()}
        batch.pop("labels", None)
        index = batch.pop("feature_index")
        with accelerator.autocast():
            logits = model(**batch)["logits"].float()
        logits = accelerator.pad_across_processes(logits, dim=1, pad_index=torch.finfo(logits.dtype).min)
        logits, index = accelerator.gather_for_metrics((logits, index))
        for i, row in zip(index.cpu().tolist(), logits.cpu().numpy()):
            scores[i] = row
    model.train(was_training)
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


@torch.no_grad()
def token_outputs(accelerator, model, loader, features=None, examples=None) -> SplitOutputs:
    """Language modelling: every block (or strided window) scored once, gathered across processes.

    Blocks all have task.max_length tokens, so per-block tensors gather without padding;
    `gather_for_metrics` drops the blocks sharding repeated, and the block `index` checks that each
    block of the split was counted exactly once.
    """
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


EVALUATORS = {"classes": class_outputs, "spans": span_outputs, "tokens": token_outputs}


def split_outputs(accelerator, model, loader, features=None, examples=None) -> SplitOutputs:
    head = accelerator.unwrap_model(model).head
    return EVALUATORS[head.evaluator](accelerator, model, loader, features, examples)


def compute_metrics(head, outputs: SplitOutputs, metric_names) -> dict:
    """The task's metrics over every example (its `predictions` against the references).

    Token outputs: perplexity reads the per-block NLL sums and counts; accuracy compares the
    predicted next token with the target at every scored position. `num_examples` counts blocks.
    """
    if outputs.references is None:
        raise ValueError("the split has no labels to score against")
    if outputs.nll is not None:
        predictions, examples = outputs.next_tokens.tolist(), len(outputs.nll)
    else:
        predictions = outputs.answers if outputs.answers is not None else head.predictions(torch.from_numpy(outputs.scores)).reshape(-1).tolist()
        examples = len(predictions)
    references = outputs.references.tolist() if isinstance(outputs.references, np.ndarray) else outputs.references
    results = {}
    for name, metric in zip(metric_names, load_metrics(metric_names)):
        if name in TOKEN_METRICS:
            metric.add_batch(nll=outputs.nll.tolist(), tokens=outputs.token_counts.tolist())
        else:
            metric.add_batch(predictions=predictions, references=references)
        results.update(metric.compute())
    results["num_examples"] = examples
    return results


def evaluate_split(accelerator, model, loader, metric_names, features=None, examples=None) -> dict:
    outputs = split_outputs(accelerator, model, loader, features, examples)
    return compute_metrics(accelerator.unwrap_model(model).head, outputs, metric_names)
