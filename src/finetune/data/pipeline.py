"""From a task config to tokenized train and evaluation sets: load -> columns -> features."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from datasets import Dataset
from omegaconf import OmegaConf

from finetune.data.columns import LabelEncoder, check_columns, standardize
from finetune.data.input_formats import FORMATS
from finetune.data.sources import load_splits, task_source
from finetune.data.splits import carve, check_carve, check_folds, is_carve, take_fold
from finetune.errors import DataError

log = logging.getLogger(__name__)


@dataclass
class TaskData:
    input_format: str
    train: Dataset | None
    evals: dict[str, Dataset]  # tokenized features per evaluation split
    examples: dict[str, Dataset]  # standardised rows per evaluation split (span QA maps back to them)
    # per split: origin, files (rows per file), rows, dropped rows, how it was carved or folded, truncated
    stats: dict = field(default_factory=dict)


def _unlabelled(dataset, roles: dict) -> bool:
    """A split without labels: no label column, or only GLUE's "no label" marks (-1 on the Hub, empty)."""
    if "label" not in roles:
        return True
    column = str(roles["label"]).split(".")[0]
    if column not in dataset.column_names:
        return True
    return all(value in (None, -1, "-1", "") for value in dataset[column])


def _roles(raw, head_cls, task, split: str, source_key: str, unlabelled_ok: tuple) -> tuple[dict, tuple]:
    """(role -> column, the roles this split must have). A role that `columns` does not map reads a
    column of its name made while reading (a lines file's `text`, a pattern group, a constant label)."""
    # Plain containers: a role given as a list of columns must be a `list`, not an OmegaConf ListConfig.
    roles = OmegaConf.to_container(raw.source.columns, resolve=True)
    readable = head_cls.required_roles + head_cls.optional_roles + ("id",)
    roles.update({column: column for column in raw.made if column in readable and column not in roles})
    required = head_cls.required_roles
    if split in unlabelled_ok and "label" in required and _unlabelled(raw.rows, roles):
        roles.pop("label", None)
        required = tuple(r for r in required if r != "label")
    missing = [role for role in required if role not in roles]
    if missing and raw.pattern is not None:
        key, groups = raw.pattern
        raise DataError(
            f"{key}.pattern: its groups ({', '.join(groups)}) give no {missing[0]!r} column, which the {task.head} head "
            f"needs; name a group {missing[0]!r} or map {source_key}.columns.{missing[0]}"
        )
    if missing and raw.source.format == "lines":
        raise DataError(
            f"{raw.origin.description}: a lines file gives only a 'text' column and the {task.head} head needs "
            f"{', '.join(missing)}; give each file a label ({source_key}.splits.{split}: [{{file: ..., label: ...}}]) "
            f"or cut columns out of the line with {source_key}.pattern"
        )
    return roles, required


def _read_stats(stats: dict) -> dict:
    """What a split cut out of another inherits from its stats: how it was read, not what was cut from it."""
    return {key: value for key, value in stats.items() if key not in ("carved_out", "held_out_fold")}


def _standardized(raw, head_cls, task, split: str, source_key: str, unlabelled_ok: tuple) -> tuple[Dataset, dict]:
    """One split's rows with a column per role (labels encoded), and how reading it went."""
    if len(raw.rows) == 0:
        raise DataError(f"{raw.origin.description}: split '{split}' has no rows")
    roles, required = _roles(raw, head_cls, task, split, source_key, unlabelled_ok)
    # Every head may name an `id` column (GLUE's index/idx): prediction files use it.
    check_columns(raw.rows, roles, required, tuple(dict.fromkeys(head_cls.optional_roles + ("id",))), task.name, raw.origin, source_key)
    encoder = None
    if "label" in roles:
        feature = raw.rows.features.get(str(roles["label"]).split(".")[0])
        encoder = LabelEncoder(task.labels, raw.source.label_map, feature, task.on_unknown_label)
    rows, dropped, dropped_empty = standardize(raw.rows, roles, encoder, raw.origin, head_cls.text_roles, task.on_empty_text)
    unmatched = sum(info.get("dropped_unmatched", 0) for info in raw.files)
    stats = {"origin": raw.origin.description, "files": raw.files, "labelled": "label" in roles,
             "dropped_unknown_label": dropped, "dropped_empty_text": dropped_empty, "dropped_unmatched": unmatched}
    if dropped:
        log.warning("%s: dropped %d rows whose label is not in %s", raw.origin.description, dropped, task.labels)
    if dropped_empty:
        log.warning("%s: dropped %d rows with an empty text (task.on_empty_text=drop)", raw.origin.description, dropped_empty)
    return rows, stats


def load_rows(cfg, head_cls, offline: bool, splits: list[str], train_split: str | None = None,
              unlabelled_ok: tuple = ()) -> tuple[dict[str, Dataset], dict]:
    """Standardised rows (one column per role, labels encoded) per split, and per-split stats.

    Splits in `unlabelled_ok` (prediction splits) may come without labels; their rows then have no
    `label` column. Splits carved from another (`{from: train, fraction: f}`) are cut out of that
    split's standardised rows (so errors still name the file's lines), all of them whenever the
    split they come from is read, so it never holds their rows. With `folds: K`, task.eval_splits[0]
    is fold `fold` of task.train_split, and train the other folds. `train_split` is then subsampled
    by trainer.max_train_samples, the others by max_eval_samples.
    """
    task = cfg.task
    source, source_key = task_source(task, cfg.data_dir)
    carves = {split: check_carve(entry, split, source_key, source.splits)
              for split, entry in source.splits.items() if is_carve(entry)}
    if any(parent in carves for parent, _, _ in carves.values()):
        raise DataError(f"{source_key}.splits: a split cannot be carved from another carved split")
    held_out = check_folds(source, source_key, task.train_split, list(task.eval_splits))
    folding = held_out is not None and (held_out in splits or task.train_split in splits)
    needed = [s for s in splits if s != held_out] + ([task.train_split] if folding else [])
    to_read = list(dict.fromkeys(carves[s][0] if s in carves else s for s in needed))
    raws = load_splits(task, to_read, cfg.data_dir, offline)
    rows_by_split, stats = {}, {}
    for split in to_read:
        rows_by_split[split], stats[split] = _standardized(raws[split], head_cls, task, split, source_key, unlabelled_ok)
    label = "label" if task.labels is not None else None
    for split, (parent, fraction, position) in carves.items():
        if parent not in rows_by_split:
            continue
        where = raws[parent].origin.description
        rows_by_split[parent], rows_by_split[split], how = carve(rows_by_split[parent], fraction, source.split_seed, label, position, where)
        stats[split] = {**_read_stats(stats[parent]), "origin": f"{where} ({fraction:g} carved from {parent})", "carved_from": parent, **how}
        stats[parent].setdefault("carved_out", []).append(split)
    if folding:
        train = task.train_split
        where = stats[train]["origin"]
        rows_by_split[train], rows_by_split[held_out], how = take_fold(
            rows_by_split[train], source.folds, source.fold, source.split_seed, label, where)
        stats[held_out] = {**_read_stats(stats[train]), "origin": f"{where} (fold {source.fold} of {source.folds} of {train})", "fold_of": train, **how}
        stats[train] = {**stats[train], "origin": f"{where} (all folds but {source.fold} of {source.folds})",
                        "held_out_fold": source.fold, **{k: v for k, v in how.items() if k != "fold"}}
    for split in splits:
        rows = rows_by_split[split]
        limit = cfg.trainer.max_train_samples if split == train_split else cfg.trainer.max_eval_samples
        if limit is not None and limit < len(rows):
            rows = rows.shuffle(seed=cfg.seed).select(range(limit)) if split == train_split else rows.select(range(limit))
            rows_by_split[split] = rows
        stats[split]["rows"] = len(rows)
    return {split: rows_by_split[split] for split in splits}, {split: stats[split] for split in splits}


@dataclass(frozen=True)
class InputSettings:
    """What featurizing reads of a task: its window and the head_args of its input format (a
    fine-tuned model's own, when one is evaluated: finetune.setup)."""

    max_length: int
    head_args: dict


def prepare(cfg, tokenizer, head_cls, offline: bool, train_split: str | None, eval_splits: list[str],
            unlabelled_ok: tuple = (), head_args: dict | None = None) -> TaskData:
    """Rows and token ids of the training split (None: no training) and of the evaluation splits.
    `head_args`: the input format's settings (default: task.head_args)."""
    task = cfg.task
    inputs = InputSettings(task.max_length, dict(task.head_args if head_args is None else head_args))
    input_format = head_cls.format_for(inputs.head_args)
    if input_format not in FORMATS:
        raise DataError(f"task '{task.name}': its head reads input format '{input_format}', which is not one of {', '.join(FORMATS)}")
    splits = ([train_split] if train_split else []) + [s for s in eval_splits if s != train_split]
    rows, stats = load_rows(cfg, head_cls, offline, splits, train_split, unlabelled_ok)
    train, evals, examples = None, {}, {}
    for split in splits:
        training = split == train_split
        features, feature_stats = FORMATS[input_format].featurize(rows[split], tokenizer, inputs, training, stats[split]["origin"])
        stats[split].update(feature_stats)
        if training:
            train = features
        else:
            evals[split], examples[split] = features, rows[split]
    return TaskData(input_format, train, evals, examples, stats)
