"""The one home of config checks that the schema's types cannot express, run before any work.

`validate` checks the schema's keys, value ranges, the task (head, metrics, main metric) and asks
the head class its own `check_config`; the mode's `check` (finetune.modes) follows it in
finetune.run.check. Each error is one ConfigError line naming the key.
"""

from __future__ import annotations

import codecs
import dataclasses
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from finetune.config.schema import BATCHING_MODES, PACKED_ATTENTION, SCHEDULERS, TrainConfig
from finetune.errors import ConfigError


def _check(condition: bool, key: str, value: Any, expected: str) -> None:
    if not condition:
        raise ConfigError(f"config key '{key}' = {value!r}: expected {expected}")


def _first_line(err: Exception) -> str:
    return next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)


def check_keys_and_values(node, schema, prefix: str = "") -> None:
    """Keys the schema does not know (added with `+key=...`), and values that are missing or do not resolve."""
    fields = [f.name for f in dataclasses.fields(schema)]
    where = f" in {prefix.rstrip('.')}" if prefix else ""
    for key in node.keys():
        full_key = f"{prefix}{key}"
        if key not in fields:
            raise ConfigError(f"unknown config key '{full_key}' (added with '+'?); valid keys{where}: {', '.join(fields)}")
        if full_key == "paths.output_dir":  # Hydra's run directory, resolved by Hydra
            continue
        try:
            value = node[key]
            child_type = OmegaConf.get_type(node, key) if isinstance(value, DictConfig) else None
            if isinstance(value, DictConfig) and dataclasses.is_dataclass(child_type):
                check_keys_and_values(value, child_type, f"{full_key}.")
            elif isinstance(value, (DictConfig, ListConfig)):
                OmegaConf.to_container(value, resolve=True, throw_on_missing=True)
        except MissingMandatoryValue as err:
            missing = getattr(err, "full_key", None) or full_key
            raise ConfigError(f"config key '{missing}' has no value (???): set it, e.g. {missing}=<value>") from None
        except OmegaConfBaseException as err:
            if "HydraConfig was not set" in str(err):  # ${hydra:...} outside a Hydra run (tests)
                continue
            raise ConfigError(f"config key '{getattr(err, 'full_key', None) or full_key}': {_first_line(err)}") from None


def _tracker_names() -> list[str]:
    """The tracker names `Accelerator(log_with=...)` accepts (it raises a bare ValueError on others)."""
    try:
        from accelerate.utils import LoggerType

        return LoggerType.list()
    except ImportError:  # pragma: no cover
        return ["tensorboard", "wandb", "mlflow", "comet_ml", "aim", "clearml", "dvclive"]


def _known_encoding(name: str) -> bool:
    try:
        codecs.lookup(name)
    except (LookupError, TypeError):
        return False
    return True


def validate(cfg) -> None:
    """Range checks that the dataclass types cannot express, the task's fit, and the head's own
    `check_config`; raises ConfigError naming the key."""
    check_keys_and_values(cfg, TrainConfig)
    _check_optim(cfg.optim)
    _check_trainer(cfg.trainer, cfg.model)
    for key, source in (("task.hub", cfg.task.hub), ("task.local", cfg.task.local)):
        if source is not None:
            _check_source(source, key)
    _check_model(cfg.model)
    _check_task_values(cfg.task)
    if cfg.peft is not None:
        check_peft(cfg.peft, cfg.model)
    check_task(cfg.task)
    from finetune.models.heads import HEADS

    HEADS[cfg.task.head].check_config(cfg)


def _check_optim(o) -> None:
    _check(o.lr > 0, "optim.lr", o.lr, "a positive number")
    _check(o.weight_decay >= 0, "optim.weight_decay", o.weight_decay, "a number >= 0")
    _check(0 <= o.warmup_ratio <= 1, "optim.warmup_ratio", o.warmup_ratio, "a number in [0, 1]")
    _check(o.max_grad_norm > 0, "optim.max_grad_norm", o.max_grad_norm, "a positive number")
    _check(len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas), "optim.betas", list(o.betas), "two numbers in [0, 1)")
    _check(o.scheduler in SCHEDULERS, "optim.scheduler", o.scheduler, f"one of {', '.join(SCHEDULERS)}")


def _check_trainer(t, model) -> None:
    _check(t.batch_size >= 1, "trainer.batch_size", t.batch_size, "an integer >= 1")
    _check(t.eval_batch_size is None or t.eval_batch_size >= 1, "trainer.eval_batch_size", t.eval_batch_size, "an integer >= 1")
    _check(t.grad_accum >= 1, "trainer.grad_accum", t.grad_accum, "an integer >= 1")
    _check(t.epochs >= 1, "trainer.epochs", t.epochs, "an integer >= 1")
    _check(t.max_steps is None or t.max_steps >= 1, "trainer.max_steps", t.max_steps, "an integer >= 1 or null")
    _check(t.eval_every is None or t.eval_every >= 1, "trainer.eval_every", t.eval_every, "an integer >= 1 or null")
    _check(t.log_every >= 1, "trainer.log_every", t.log_every, "an integer >= 1")
    _check(t.save_total_limit >= 1, "trainer.save_total_limit", t.save_total_limit, "an integer >= 1")
    _check(t.mixed_precision in ("no", "bf16", "fp16", "auto"), "trainer.mixed_precision", t.mixed_precision, "one of no, bf16, fp16, auto")
    _check(t.batching in BATCHING_MODES, "trainer.batching", t.batching, f"one of {', '.join(BATCHING_MODES)}")
    _check(t.max_tokens is None or t.max_tokens >= 1, "trainer.max_tokens", t.max_tokens, "an integer >= 1 or null")
    _check(t.pack_length is None or t.pack_length >= 1, "trainer.pack_length", t.pack_length, "an integer >= 1 or null")
    if t.batching == "packed":
        _check(model.attn_implementation in PACKED_ATTENTION, "model.attn_implementation", model.attn_implementation,
               f"one of {', '.join(PACKED_ATTENTION)} with trainer.batching=packed (attention must be blocked between packed "
               f"sequences; or use trainer.batching=bucketed)")
    _check(t.bucket_batches >= 1, "trainer.bucket_batches", t.bucket_batches, "an integer >= 1")
    _check(t.num_workers >= 0, "trainer.num_workers", t.num_workers, "an integer >= 0 (0 loads batches in the main process)")
    trackers = _tracker_names()
    _check(not t.tracker or t.tracker in trackers, "trainer.tracker", t.tracker, f"null or one of {', '.join(trackers)}")
    _check(t.pad_to_multiple_of is None or t.pad_to_multiple_of >= 1, "trainer.pad_to_multiple_of", t.pad_to_multiple_of, "an integer >= 1 or null")
    for key in ("max_train_samples", "max_eval_samples"):
        value = t[key]
        _check(value is None or value >= 1, f"trainer.{key}", value, "an integer >= 1 or null")
    es = t.early_stopping
    _check(es.patience is None or es.patience >= 1, "trainer.early_stopping.patience", es.patience, "an integer >= 1 or null")
    _check(es.min_delta >= 0, "trainer.early_stopping.min_delta", es.min_delta, "a number >= 0")


def _check_source(source, key: str) -> None:
    _check(_known_encoding(source.encoding), f"{key}.encoding", source.encoding, "a Python codec name, e.g. utf-8-sig or latin-1")
    _check(source.on_unmatched in ("error", "drop"), f"{key}.on_unmatched", source.on_unmatched, "error or drop")
    _check(source.folds is None or source.folds >= 2, f"{key}.folds", source.folds, "an integer >= 2 or null")
    if source.folds is not None:
        _check(source.fold is not None and 0 <= source.fold < source.folds, f"{key}.fold", source.fold,
               f"a fold in 0..{source.folds - 1} ({key}.folds={source.folds}; all of them: -m '{key}.fold=range({source.folds})')")
    else:
        _check(source.fold is None, f"{key}.fold", source.fold, f"null unless {key}.folds is set (the number of folds)")


def _check_model(m) -> None:
    _check(0 <= m.head_dropout < 1, "model.head_dropout", m.head_dropout, "a number in [0, 1)")
    _check(m.dropout is None or 0 <= m.dropout < 1, "model.dropout", m.dropout, "a number in [0, 1) or null")
    if m.from_scratch and m.n_embd is not None:
        n_head = m.n_head if m.n_head is not None else 12  # GPT2Config's default
        _check(m.n_embd % n_head == 0, "model.n_embd", m.n_embd, f"a multiple of model.n_head ({n_head})")


def _check_task_values(task) -> None:
    _check(task.max_length >= 8, "task.max_length", task.max_length, "an integer >= 8")
    _check(task.on_unknown_label in ("error", "drop"), "task.on_unknown_label", task.on_unknown_label, "error or drop")
    _check(task.on_empty_text in ("error", "drop"), "task.on_empty_text", task.on_empty_text, "error or drop")
    _check(task.main_metric_mode in (None, "max", "min"), "task.main_metric_mode", task.main_metric_mode,
           "max, min or null (the main metric's own direction)")
    _check(task.aux_lm_weight >= 0, "task.aux_lm_weight", task.aux_lm_weight, "a number >= 0 (0 turns the auxiliary LM loss off)")
    predict = task.predict_split
    _check(isinstance(predict, str) or (isinstance(predict, ListConfig) and len(predict) > 0 and all(isinstance(s, str) for s in predict)),
           "task.predict_split", predict, "a split name or a list of split names")
    _check(task.hub is not None or task.local is not None, "task", task.name, "a 'hub' or a 'local' source")
    p = task.prompt
    _check(p.shots >= 0, "task.prompt.shots", p.shots, "an integer >= 0")
    _check(p.calibration in ("none", "contextual"), "task.prompt.calibration", p.calibration, "none or contextual")
    _check(p.max_new_tokens >= 1, "task.prompt.max_new_tokens", p.max_new_tokens, "an integer >= 1")
    _check(len(p.stop) > 0 and all(p.stop), "task.prompt.stop", list(p.stop), "a list of non-empty stop strings")


def check_task(task) -> None:
    """The task's head, metrics and main metric fit together (the head's own settings: its `check_config`)."""
    from finetune.metrics import AVAILABLE, higher_is_better, metric_spec
    from finetune.models.heads import HEADS
    from finetune.outputs.predictions import check_submission
    from finetune.training.evaluation import EVALUATORS

    if task.head not in HEADS:
        raise ConfigError(f"task.head '{task.head}' is not a known head; choose one of {', '.join(HEADS)}")
    unknown = [m for m in task.metrics if m not in AVAILABLE]
    if unknown:
        raise ConfigError(f"task.metrics {unknown} unknown; available: {', '.join(AVAILABLE)}")
    reported = [key for m in task.metrics for key in metric_spec(m).keys]
    if task.main_metric not in reported:
        raise ConfigError(f"task.main_metric '{task.main_metric}' is not reported by task.metrics {list(task.metrics)} (they report {reported})")
    produced = EVALUATORS[HEADS[task.head].evaluator].metric_inputs
    wrong = [m for m in task.metrics if metric_spec(m).reads(produced) is None]
    if wrong:
        fitting = [m for m in AVAILABLE if metric_spec(m).reads(produced) is not None]
        raise ConfigError(f"task.metrics {wrong} do not apply to the '{task.head}' head: it is scored with "
                          f"{', '.join(fitting)} (metrics of {', '.join(produced)})")
    if task.main_metric_mode == "max" and not higher_is_better(task.metrics, task.main_metric):
        raise ConfigError(f"task.main_metric '{task.main_metric}' is better when lower: set task.main_metric_mode=min (or leave it null)")
    check_submission(task)


def check_peft(peft, model) -> None:
    """LoRA settings that are wrong whatever the backbone (target names are checked against it on load)."""
    from finetune.models.lora import require_peft

    _check(peft.method == "lora", "peft.method", peft.method, "lora")
    require_peft()
    _check(peft.r >= 1, "peft.r", peft.r, "an integer >= 1 (the rank of the LoRA update)")
    _check(peft.alpha > 0, "peft.alpha", peft.alpha, "a positive number (the update is scaled by alpha / r)")
    _check(0 <= peft.dropout < 1, "peft.dropout", peft.dropout, "a number in [0, 1)")
    targets = list(peft.target_modules)
    _check(len(targets) > 0 and all(isinstance(t, str) and t for t in targets), "peft.target_modules", targets,
           "a non-empty list of layer names, e.g. [c_attn] or [c_attn, c_proj, c_fc]")
    if model.gpt1_tokens:
        raise ConfigError("peft=lora with model.gpt1_tokens=true: LoRA freezes the embeddings, so the three added "
                          "tokens would keep their random vectors; use model.gpt1_tokens=false with LoRA, or full fine-tuning (no peft=lora)")


def predict_splits(task) -> list[str]:
    """task.predict_split as a list (MNLI predicts matched and mismatched test sets)."""
    split = task.predict_split
    return [split] if isinstance(split, str) else list(split)


def to_container(cfg) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)
