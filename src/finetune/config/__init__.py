"""The config: its typed schema (finetune.config.schema) and its checks (finetune.config.validation)."""

from finetune.config.schema import (
    BATCHING_MODES, FLASH_ATTENTION, PACKED_ATTENTION, PROJECT_ROOT, SCHEDULERS, EarlyStoppingConfig, ModeConfig,
    ModelConfig, OptimConfig, PathsConfig, PeftConfig, PromptConfig, SourceConfig, TaskConfig, TrainConfig,
    TrainerConfig, register_configs,
)
from finetune.config.validation import check_keys_and_values, check_peft, check_task, predict_splits, to_container, validate

__all__ = [
    "BATCHING_MODES", "FLASH_ATTENTION", "PACKED_ATTENTION", "PROJECT_ROOT", "SCHEDULERS", "EarlyStoppingConfig", "ModeConfig",
    "ModelConfig", "OptimConfig", "PathsConfig", "PeftConfig", "PromptConfig", "SourceConfig", "TaskConfig", "TrainConfig",
    "TrainerConfig", "check_keys_and_values", "check_peft", "check_task", "predict_splits", "register_configs",
    "to_container", "validate",
]
