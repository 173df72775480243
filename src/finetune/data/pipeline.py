"""From a task config to tokenized train and evaluation sets: load -> columns -> features."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from datasets import Dataset
from omegaconf import OmegaConf

from finetune.data import span
from finetune.data.columns import LabelEncoder, Origin, check_columns, standardize
from finetune.data.features import FEATURIZERS
from finetune.data.sources import load_splits, task_source
from finetune.data.splits import carve, check_carve, is_carve
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


def _unlabelled(dataset, roles: dict) -> bool:
    """A split without labels: no label column, or only GLUE's "no label" marks (-1 on the Hub, empty)."""
    column = str(roles["label"]).split(".")[0]
    if column not in dataset.column_names:
        return True
    return all(value in (None, -1, "-1", "") for value in dataset[column])


def load_rows(cfg, head_cls, offline: bool, splits: list[str], train_split: str | None = None,
              unlabelled_ok: tuple = ()) -> tuple[dict[str, Dataset], dict]:
    """Standardised rows (one column per role, labels encoded) per split, and per-split stats.

    Splits in `unlabelled_ok` (prediction splits) may come without labels; their rows then have no
    `label` column. A split carved from another (`{from: train, fraction: f}`) is cut out of that
    split's standardised rows, so errors still name the file's lines. `train_split` is then
    subsampled by trainer.max_train_samples, the others by max_eval_samples.
    """
    task = cfg.task
    source, source_key = task_source(task, cfg.data_dir)
    carved = {split: check_carve(source.splits[split], split, source_key, source.splits)
              for split in splits if is_carve(source.splits.get(split))}
    if any(parent in carved for parent, _, _ in carved.values()):
        raise DataError(f"{source_key}.splits: a split cannot be carved from another carved split")
    to_read = list(dict.fromkeys([s for s in splits if s not in carved] + [parent for parent, _, _ in carved.values()]))
    raw, origins, sources = load_splits(task, to_read, cfg.data_dir, offline)
    rows_by_split, stats = {}, {}
    for split in to_read:
        split_source = sources[split]
        origin = Origin(origins[split], _first_row_line(split_source) if cfg.data_dir else None)
        dataset = raw[split]
        if len(dataset) == 0:
            raise DataError(f"{origin.description}: split '{split}' has no rows")
        # Plain containers: a role given as a list of columns must be a `list`, not an OmegaConf ListConfig.
        roles = OmegaConf.to_container(split_source.columns, resolve=True)
        required = head_cls.required_roles
        if split in unlabelled_ok and "label" in roles and _unlabelled(dataset, roles):
            roles.pop("label")
            required = tuple(r for r in required if r != "label")
        # Every head may name an `id` column (GLUE's index/idx): prediction files use it.
        check_columns(dataset, roles, required, tuple(dict.fromkeys(head_cls.optional_roles + ("id",))), task.name, origin, source_key)
        encoder = None
        if "label" in roles:
            feature = dataset.features.get(str(roles["label"]).split(".")[0])
            encoder = LabelEncoder(task.labels, split_source.label_map, feature, task.on_unknown_label)
        rows, dropped, dropped_empty = standardize(dataset, roles, encoder, origin, head_cls.text_roles, task.on_empty_text)
        stats[split] = {"origin": origin.description, "labelled": "label" in roles,
                        "dropped_unknown_label": dropped, "dropped_empty_text": dropped_empty}
        if dropped:
            log.warning("%s: dropped %d rows whose label is not in %s", origin.description, dropped, task.labels)
        if dropped_empty:
            log.warning("%s: dropped %d rows with an empty text (task.on_empty_text=drop)", origin.description, dropped_empty)
        rows_by_split[split] = rows
    for split, (parent, fraction, position) in carved.items():
        label = "label" if task.labels is not None and "label" in rows_by_split[parent].column_names else None
        rows_by_split[parent], rows_by_split[split], how = carve(
            rows_by_split[parent], fraction, source.split_seed, label, position, origins[parent])
        stats[split] = {**stats[parent], "origin": f"{origins[parent]} ({fraction:g} carved from {parent})", "carved_from": parent, **how}
        stats[parent].setdefault("carved_out", []).append(split)
    for split in splits:
        rows = rows_by_split[split]
        limit = cfg.trainer.max_train_samples if split == train_split else cfg.trainer.max_eval_samples
        if limit is not None and limit < len(rows):
            rows = rows.shuffle(seed=cfg.seed).select(range(limit)) if split == train_split else rows.select(range(limit))
            rows_by_split[split] = rows
        stats[split]["rows"] = len(rows)
    return {split: rows_by_split[split] for split in splits}, {split: stats[split] for split in splits}


def featurize(rows: Dataset, input_format: str, tokenizer, task, training: bool, where: str) -> tuple[Dataset, dict]:
    """Token ids for one split's rows (cached by `datasets.map`), and what was truncated or dropped.

    Evaluation features carry `index`, the row each example came from, so outputs gathered in any
    order (length-sorted, several processes) map back to their rows (span QA windows carry
    `example_id` and `feature_index` instead, see finetune.data.span).
    """
    if not training and input_format != "span":
        rows = rows.add_column("index", list(range(len(rows))))
    keep = {"label", "index"}
    log.info("tokenizing %s (%d rows)", where, len(rows))
    features = rows.map(
        FEATURIZERS[input_format],
        batched=True,
        remove_columns=[c for c in rows.column_names if c not in keep],
        fn_kwargs={"tokenizer": tokenizer, "max_length": task.max_length, "args": dict(task.head_args), "training": training},
        desc=f"Tokenizing {where}",
    )
    truncated = int(sum(features["truncated"]))
    features = features.remove_columns("truncated")
    if "label" in features.column_names:
        features = features.rename_column("label", "labels")
    stats = {"truncated": truncated}
    if input_format == "span":  # several windows per example; see finetune.data.span
        features, without_answer = span.finalize(features, rows, training, where)
        stats.update(features=len(features), windows_without_answer=without_answer)
    if truncated:
        log.warning("%s: %d of %d examples longer than task.max_length=%d were truncated", where, truncated, len(rows), task.max_length)
    return features, stats


def prepare(cfg, tokenizer, head_cls, offline: bool, train_split: str | None, eval_splits: list[str],
            unlabelled_ok: tuple = ()) -> TaskData:
    """Rows and token ids of the training split (None: no training) and of the evaluation splits."""
    task = cfg.task
    input_format = head_cls.format_for(task.head_args)
    if input_format not in FEATURIZERS:
        raise DataError(f"task '{task.name}': no featurizer for input format '{input_format}'")
    splits = ([train_split] if train_split else []) + [s for s in eval_splits if s != train_split]
    rows, stats = load_rows(cfg, head_cls, offline, splits, train_split, unlabelled_ok)
    train, evals, examples = None, {}, {}
    for split in splits:
        features, feature_stats = featurize(rows[split], input_format, tokenizer, task, split == train_split, stats[split]["origin"])
        stats[split].update(feature_stats)
        if split == train_split:
            train = features
        else:
            evals[split], examples[split] = features, rows[split]
    return TaskData(input_format, train, evals, examples, stats)
