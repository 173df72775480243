"""From a task config to tokenized train and evaluation sets: load -> columns -> features."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from datasets import Dataset
from omegaconf import OmegaConf

from finetune.data import span
from finetune.data.columns import LabelEncoder, Origin, check_columns, standardize
from finetune.data.features import FEATURIZERS
from finetune.data.sources import load_splits
from finetune.errors import DataError

log = logging.getLogger(__name__)


@dataclass
class TaskData:
    input_format: str
    train: Dataset | None
    evals: dict[str, Dataset]  # tokenized features per evaluation split
    examples: dict[str, Dataset]  # standardised rows per evaluation split (span QA maps back to them)
    stats: dict = field(default_factory=dict)  # per split: rows, dropped (unknown label), truncated


def _first_row_line(source) -> int | None:
    if source.format in ("tsv", "csv"):
        return 2 if source.header else 1
    if source.format == "jsonl":
        return 1
    return None


def prepare(cfg, tokenizer, head_cls, offline: bool, with_train: bool = True) -> TaskData:
    task = cfg.task
    source_key = "task.local" if cfg.data_dir else "task.hub"
    source = task.local if cfg.data_dir else task.hub
    input_format = head_cls.format_for(task.head_args)
    if input_format not in FEATURIZERS:
        raise DataError(f"task '{task.name}': no featurizer for input format '{input_format}'")
    splits = ([task.train_split] if with_train else []) + list(task.eval_splits)
    raw, origins = load_splits(task, splits, cfg.data_dir, offline)
    # Plain containers: a role given as a list of columns must be a `list`, not an OmegaConf ListConfig.
    roles = OmegaConf.to_container(source.columns, resolve=True) if source else {}

    train, evals, examples, stats = None, {}, {}, {}
    for split in splits:
        origin = Origin(origins[split], _first_row_line(source) if cfg.data_dir else None)
        dataset = raw[split]
        if len(dataset) == 0:
            raise DataError(f"{origin.description}: split '{split}' has no rows")
        check_columns(dataset, roles, head_cls.required_roles, head_cls.optional_roles, task.name, origin, source_key)
        encoder = None
        if "label" in roles:
            feature = dataset.features.get(str(roles["label"]).split(".")[0])
            encoder = LabelEncoder(task.labels, source.label_map, feature, task.on_unknown_label)
        rows, dropped, dropped_empty = standardize(dataset, roles, encoder, origin, head_cls.text_roles, task.on_empty_text)
        training = split == task.train_split and with_train
        limit = cfg.trainer.max_train_samples if training else cfg.trainer.max_eval_samples
        if limit is not None and limit < len(rows):
            rows = rows.shuffle(seed=cfg.seed).select(range(limit)) if training else rows.select(range(limit))
        features = rows.map(
            FEATURIZERS[input_format],
            batched=True,
            remove_columns=[c for c in rows.column_names if c != "label"],
            fn_kwargs={"tokenizer": tokenizer, "max_length": task.max_length, "args": dict(task.head_args), "training": training},
            desc=f"Tokenizing {split}",
        )
        truncated = int(sum(features["truncated"]))
        features = features.remove_columns("truncated")
        if "label" in features.column_names:
            features = features.rename_column("label", "labels")
        stats[split] = {"rows": len(rows), "dropped_unknown_label": dropped, "dropped_empty_text": dropped_empty, "truncated": truncated}
        if input_format == "span":  # several windows per example; see finetune.data.span
            features, without_answer = span.finalize(features, rows, training, origin.description)
            stats[split].update(features=len(features), windows_without_answer=without_answer)
        if dropped:
            log.warning("%s: dropped %d rows whose label is not in %s", origin.description, dropped, task.labels)
        if dropped_empty:
            log.warning("%s: dropped %d rows with an empty text (task.on_empty_text=drop)", origin.description, dropped_empty)
        if truncated:
            log.warning("%s: %d of %d examples longer than task.max_length=%d were truncated", split, truncated, len(rows), task.max_length)
        if training:
            train = features
        else:
            evals[split], examples[split] = features, rows
    return TaskData(input_format, train, evals, examples, stats)
