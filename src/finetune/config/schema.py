"""Typed schema of the Hydra config.

Hydra merges every YAML file into these dataclasses, so a misspelt key or a value of the wrong
type fails when the config is composed, before any data or model is loaded. Value ranges that a
type cannot express are checked by finetune.config.validation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

PROJECT_ROOT = Path(__file__).resolve().parents[3]
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
    # max | min: which way is better (best checkpoint, early stopping, Optuna); null: the main metric's own direction
    main_metric_mode: Optional[str] = None
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
