"""Typed schema of the Hydra config.

Hydra merges every YAML file into these dataclasses, so a misspelt key or a value of the wrong
type fails when the config is composed, before any data or model is loaded. Value ranges that a
type cannot express are checked by `validate`.
"""

from __future__ import annotations

import codecs
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from finetune.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# transformers.get_scheduler names that need nothing but warmup and total steps (not reduce_lr_on_plateau).
# trainer.batching (finetune.training.batching), and the attention implementations that block attention
# between packed sequences (transformers derives the mask from restarting position ids).
BATCHING_MODES = ("bucketed", "random", "token_budget", "packed")
FLASH_ATTENTION = ("flash_attention_2", "flash_attention_3", "flash_attention_4")
PACKED_ATTENTION = ("sdpa", "eager", "flex_attention", *FLASH_ATTENTION)
SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup", "inverse_sqrt")


@dataclass
class SourceConfig:
    """Where a task's examples come from: a Hub dataset or files under `data_dir`."""

    path: str = MISSING  # Hub dataset id, or a directory relative to data_dir
    name: Optional[str] = None  # Hub configuration name (e.g. "sst2")
    format: str = "hub"  # hub | tsv | csv | json | jsonl | parquet | squad_json | text
    splits: Dict[str, Any] = field(default_factory=dict)  # split -> Hub split, file, or list of files
    columns: Dict[str, Any] = field(default_factory=dict)  # role -> column, or list of columns to join
    header: bool = True  # tsv/csv files: is the first row a header?
    column_names: Optional[List[str]] = None  # names for header-less tsv/csv files
    label_map: Dict[str, str] = field(default_factory=dict)  # raw label value -> label name
    encoding: str = "utf-8-sig"  # utf-8-sig also reads plain UTF-8 and drops MRPC's BOM
    # format: lines is one example per line (column `text`). A split's list may hold {file: x.pos,
    # label: positive} entries: one label for every row of that file (column `label`).
    # `pattern`: a regular expression with named groups, matched against each whole line of a lines
    # file (other formats: the value of pattern_column); its groups become columns.
    pattern: Optional[str] = None
    pattern_column: Optional[str] = None
    on_unmatched: str = "error"  # error | drop: a line the pattern does not match (drop counts them)
    # K-fold cross-validation: the first eval split is fold `fold` (0-based) of the train split, train the
    # other folds (stratified by label, drawn with split_seed). Sweep: -m 'task.local.fold=range(K)'
    folds: Optional[int] = None
    fold: Optional[int] = None
    split_seed: int = 0  # which rows a carved split takes ({from: train, fraction: f}); independent of `seed`
    # What one row (a document, for the lm head) is. format=text: line | paragraph (blank-line
    # separated) | file; table formats and the Hub: column (each row's text column); None = that default.
    document: Optional[str] = None


@dataclass
class PromptConfig:
    """How mode=zeroshot asks the pretrained LM (finetune.data.prompts; lm-evaluation-harness conventions).

    `template` names the task's column roles as placeholders ({text}, {text_pair}, {context},
    {question}, {choices[0]}; filters {role|strip}, {role|period}). `choices` maps each label name to
    the answer text scored after the prompt; multiple choice omits it (the row's candidates are the
    answers). Span QA generates the answer greedily instead.
    """

    template: str = ""  # empty: the task has no prompt (mode=zeroshot then says which key to set)
    # label name -> answer text; empty for multiple choice (the row's candidates). Any: a YAML boolean is reported, not cast.
    choices: Dict[str, Any] = field(default_factory=dict)
    delimiter: str = " "  # between the prompt and each answer (the harness's target_delimiter)
    fewshot_delimiter: str = "\n\n"  # after each solved demonstration
    shots: int = 0  # solved training examples put before every prompt (the same ones for every example)
    shot_seed: Optional[int] = None  # which training examples; None = the run's `seed`
    calibration: str = "none"  # none | contextual (Zhao et al. 2021: divide by the content-free probabilities)
    content_free: str = "N/A"  # the input that stands for "no content" in contextual calibration
    max_new_tokens: int = 32  # span QA: greedy continuation up to a stop string or this many tokens
    stop: List[str] = field(default_factory=lambda: ["\n"])  # span QA: stop strings


@dataclass
class TaskConfig:
    name: str = MISSING
    head: str = MISSING  # a name in finetune.models.heads.HEADS
    hub: Optional[SourceConfig] = None
    local: Optional[SourceConfig] = None
    labels: Optional[List[str]] = None  # label names in class-id order; None for regression
    on_unknown_label: str = "error"  # error | drop (drop counts and reports the rows)
    on_empty_text: str = "error"  # error | drop: rows with an empty text or answer choice
    metrics: List[str] = field(default_factory=lambda: ["accuracy"])
    main_metric: str = "accuracy"
    main_metric_mode: str = "max"  # max | min: which way is better (best checkpoint, early stopping, Optuna)
    max_length: int = 128
    train_split: str = "train"
    eval_splits: List[str] = field(default_factory=lambda: ["validation"])
    predict_split: Any = "test"  # mode=predict: a split name or a list of them (MNLI: matched, mismatched)
    # GLUE leaderboard files written by mode=predict: {files: {split: File.tsv}, labels: {name: value}};
    # no `labels` for regression (a float with 3 decimals).
    submission: Optional[Dict[str, Any]] = None
    head_args: Dict[str, Any] = field(default_factory=dict)
    # GPT-1's auxiliary objective: loss = task loss + aux_lm_weight * LM loss over the real tokens of
    # every sequence the head reads (0 = off; GPT-1 used 0.5).
    aux_lm_weight: float = 0.0
    prompt: PromptConfig = field(default_factory=PromptConfig)  # mode=zeroshot: how to ask the pretrained LM


@dataclass
class ModelConfig:
    name_or_path: str = "gpt2"  # Hub id or a save_pretrained directory
    tokenizer: Optional[str] = None  # defaults to name_or_path
    from_scratch: bool = False  # random init from the config below (tiny models for tests)
    n_layer: Optional[int] = None
    n_embd: Optional[int] = None
    n_head: Optional[int] = None
    n_positions: Optional[int] = None
    gpt1_tokens: bool = False  # add learned <|start|> <|delim|> <|extract|> tokens as in GPT-1
    head_dropout: float = 0.1
    dropout: Optional[float] = None  # backbone dropout (GPT-2: resid/embd/attn_pdrop); None = the checkpoint's
    attn_implementation: str = "sdpa"
    # Train GPT-2's gelu_new as torch's fused tanh GELU (the same formula to float rounding; a third less
    # activation memory, finetune.models.backbone). Off by default until the benchmark tables are re-measured with it.
    fused_gelu: bool = False
    trust_remote_code: bool = False
    # Recompute each block's activations in the backward pass instead of keeping them (non-reentrant
    # torch checkpointing through transformers' activation_checkpointing_enable): less memory, ~30% more compute.
    activation_checkpointing: bool = False
    # evaluate/predict on a run's adapter/ directory: the base model to put it on; null = the adapter's
    # own record (adapter_config.json's base_model_name_or_path).
    adapter_base: Optional[str] = None


@dataclass
class PeftConfig:
    """`peft=lora` (configs/peft/lora.yaml): LoRA adapters on the backbone with the `peft` library.

    The backbone's weights are frozen; the adapters and the task head are trained. GPT-2's
    projections are `Conv1D` layers: c_attn (query/key/value), c_proj (attention output and MLP
    output) and c_fc (MLP input).
    """

    method: str = "lora"  # the only method so far
    r: int = 8  # rank of the update B @ A
    alpha: float = 16.0  # the update is scaled by alpha / r
    dropout: float = 0.05  # dropout on the adapter's input
    target_modules: List[str] = field(default_factory=lambda: ["c_attn"])  # backbone layer names (suffixes) to adapt


@dataclass
class OptimConfig:
    lr: float = 5e-5
    weight_decay: float = 0.01
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    scheduler: str = "linear"  # any transformers.get_scheduler name
    warmup_ratio: float = 0.002  # GPT-1 warmed up over 0.2% of training
    max_grad_norm: float = 1.0
    fused: Optional[bool] = None  # fused AdamW; None = on (CUDA and CPU: torch has both kernels)


@dataclass
class EarlyStoppingConfig:
    patience: Optional[int] = None  # evaluations without improvement before stopping; None = off
    min_delta: float = 0.0  # an improvement must beat the best by more than this


@dataclass
class TrainerConfig:
    epochs: int = 3
    max_steps: Optional[int] = None  # optimizer steps; overrides epochs when set
    batch_size: int = 32  # per process, per micro-step
    eval_batch_size: Optional[int] = None  # default: 4 x batch_size (no gradients; sorted by length)
    grad_accum: int = 1
    mixed_precision: str = "no"  # no | bf16 | fp16 | auto (bf16 on a CUDA GPU that has it, else no)
    eval_every: Optional[int] = None  # optimizer steps; None = at the end of each epoch
    log_every: int = 10
    save_total_limit: int = 2  # step checkpoints kept besides the best one
    resume: Optional[str] = None  # checkpoint directory, or "latest"
    tracker: Optional[str] = "tensorboard"  # any accelerate tracker name, or null
    max_train_samples: Optional[int] = None
    max_eval_samples: Optional[int] = None
    # None = by device: 8 on CUDA (tensor cores), none on CPU (it only adds work there); 1 = never.
    pad_to_multiple_of: Optional[int] = None
    pad_to_max_length: bool = False  # pad every batch to task.max_length (run_glue's way; for comparison)
    # Speed (see docs/benchmarks.md). bucketed: batches of batch_size examples of similar length;
    # random: shuffled examples; token_budget: batches of up to max_tokens padded tokens; packed: the
    # random batches without padding, sequences end to end in rows of pack_length tokens.
    batching: str = "bucketed"  # bucketed | random | token_budget | packed
    bucket_batches: int = 50  # bucketed: batches per length-sorted bucket
    max_tokens: Optional[int] = None  # token_budget: padded tokens per batch; None = batch_size x mean length
    pack_length: Optional[int] = None  # packed: tokens per row; None = task.max_length (FlashAttention: one row)
    eval_sort_by_length: bool = True  # evaluate longest first (less padding; metrics unchanged)
    compile: bool = False  # torch.compile the model (worth it on GPU; ~1.03x on CPU after a long compile)
    tf32: bool = True  # on CUDA: TF32 matmuls for the fp32 parts
    num_workers: int = 0
    progress_bar: bool = True
    cpu: bool = False  # force CPU even when a GPU is present
    # CPU: glibc malloc reuses freed blocks instead of an mmap per large tensor and a page fault per
    # page every step (finetune.training.allocator); false = glibc's defaults.
    reuse_host_memory: bool = True
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)


@dataclass
class PathsConfig:
    root_dir: str = str(PROJECT_ROOT)
    output_dir: str = "${hydra:runtime.output_dir}"
    log_dir: str = "outputs"


@dataclass
class ModeConfig:
    """What the command does with the shared setup (configs/mode/<name>.yaml, finetune.modes)."""

    name: str = "train"  # a name in finetune.modes.MODES
    fresh_head: bool = False  # evaluate/predict: allow a pretrained backbone with an untrained head


@dataclass
class TrainConfig:
    mode: ModeConfig = field(default_factory=ModeConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    peft: Optional[PeftConfig] = None  # null: full fine-tuning
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    seed: int = 42
    data_dir: Optional[str] = None  # local data laid out like ../shared/data; None = the Hub
    offline: Optional[bool] = None  # None = detect (HF_HUB_OFFLINE or no route to the Hub)


def register_configs() -> None:
    from finetune.distributed import register_resolvers

    ConfigStore.instance().store(name="train_schema", node=TrainConfig)
    register_resolvers()  # ${ft.now:...}, ${ft.main_process:...} used by configs/hydra/default.yaml


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
    """Range checks that the dataclass types cannot express; raises ConfigError naming the key."""
    check_keys_and_values(cfg, TrainConfig)
    t, o, task = cfg.trainer, cfg.optim, cfg.task
    _check(o.lr > 0, "optim.lr", o.lr, "a positive number")
    _check(o.weight_decay >= 0, "optim.weight_decay", o.weight_decay, "a number >= 0")
    _check(0 <= o.warmup_ratio <= 1, "optim.warmup_ratio", o.warmup_ratio, "a number in [0, 1]")
    _check(o.max_grad_norm > 0, "optim.max_grad_norm", o.max_grad_norm, "a positive number")
    _check(len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas), "optim.betas", list(o.betas), "two numbers in [0, 1)")
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
        _check(cfg.model.attn_implementation in PACKED_ATTENTION, "model.attn_implementation", cfg.model.attn_implementation,
               f"one of {', '.join(PACKED_ATTENTION)} with trainer.batching=packed (attention must be blocked between packed "
               f"sequences; or use trainer.batching=bucketed)")
    _check(t.bucket_batches >= 1, "trainer.bucket_batches", t.bucket_batches, "an integer >= 1")
    _check(t.num_workers >= 0, "trainer.num_workers", t.num_workers, "an integer >= 0 (0 loads batches in the main process)")
    trackers = _tracker_names()
    _check(not t.tracker or t.tracker in trackers, "trainer.tracker", t.tracker, f"null or one of {', '.join(trackers)}")
    for key, source in (("task.hub", task.hub), ("task.local", task.local)):
        if source is not None:
            _check(_known_encoding(source.encoding), f"{key}.encoding", source.encoding, "a Python codec name, e.g. utf-8-sig or latin-1")
            _check(source.on_unmatched in ("error", "drop"), f"{key}.on_unmatched", source.on_unmatched, "error or drop")
            _check(source.folds is None or source.folds >= 2, f"{key}.folds", source.folds, "an integer >= 2 or null")
            if source.folds is not None:
                _check(source.fold is not None and 0 <= source.fold < source.folds, f"{key}.fold", source.fold,
                       f"a fold in 0..{source.folds - 1} ({key}.folds={source.folds}; all of them: -m '{key}.fold=range({source.folds})')")
            else:
                _check(source.fold is None, f"{key}.fold", source.fold, f"null unless {key}.folds is set (the number of folds)")
    _check(t.pad_to_multiple_of is None or t.pad_to_multiple_of >= 1, "trainer.pad_to_multiple_of", t.pad_to_multiple_of, "an integer >= 1 or null")
    for key in ("max_train_samples", "max_eval_samples"):
        value = t[key]
        _check(value is None or value >= 1, f"trainer.{key}", value, "an integer >= 1 or null")
    _check(0 <= cfg.model.head_dropout < 1, "model.head_dropout", cfg.model.head_dropout, "a number in [0, 1)")
    _check(cfg.model.dropout is None or 0 <= cfg.model.dropout < 1, "model.dropout", cfg.model.dropout, "a number in [0, 1) or null")
    _check(task.max_length >= 8, "task.max_length", task.max_length, "an integer >= 8")
    _check(task.on_unknown_label in ("error", "drop"), "task.on_unknown_label", task.on_unknown_label, "error or drop")
    _check(task.on_empty_text in ("error", "drop"), "task.on_empty_text", task.on_empty_text, "error or drop")
    _check(task.main_metric_mode in ("max", "min"), "task.main_metric_mode", task.main_metric_mode, "max or min")
    _check(task.aux_lm_weight >= 0, "task.aux_lm_weight", task.aux_lm_weight, "a number >= 0 (0 turns the auxiliary LM loss off)")
    predict = task.predict_split
    _check(isinstance(predict, str) or (isinstance(predict, ListConfig) and len(predict) > 0 and all(isinstance(s, str) for s in predict)),
           "task.predict_split", predict, "a split name or a list of split names")
    es = t.early_stopping
    _check(es.patience is None or es.patience >= 1, "trainer.early_stopping.patience", es.patience, "an integer >= 1 or null")
    _check(es.min_delta >= 0, "trainer.early_stopping.min_delta", es.min_delta, "a number >= 0")
    _check(task.hub is not None or task.local is not None, "task", task.name, "a 'hub' or a 'local' source")
    _check(o.scheduler in SCHEDULERS, "optim.scheduler", o.scheduler, f"one of {', '.join(SCHEDULERS)}")
    p = task.prompt
    _check(p.shots >= 0, "task.prompt.shots", p.shots, "an integer >= 0")
    _check(p.calibration in ("none", "contextual"), "task.prompt.calibration", p.calibration, "none or contextual")
    _check(p.max_new_tokens >= 1, "task.prompt.max_new_tokens", p.max_new_tokens, "an integer >= 1")
    _check(len(p.stop) > 0 and all(p.stop), "task.prompt.stop", list(p.stop), "a list of non-empty stop strings")
    if cfg.mode.name == "zeroshot":
        _check(not cfg.model.gpt1_tokens, "model.gpt1_tokens", cfg.model.gpt1_tokens,
               "false in mode=zeroshot (the GPT-1 tokens are learned in fine-tuning; a pretrained LM has none)")
    if cfg.peft is not None:
        check_peft(cfg.peft, cfg.model)
    m = cfg.model
    if m.from_scratch and m.n_embd is not None:
        n_head = m.n_head if m.n_head is not None else 12  # GPT2Config's default
        _check(m.n_embd % n_head == 0, "model.n_embd", m.n_embd, f"a multiple of model.n_head ({n_head})")


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
