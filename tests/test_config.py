"""The real Hydra config composes, validates types early, and every task/model option loads."""

import pytest

from conftest import CONFIG_DIR, compose_config
from finetune.config import validate
from finetune.errors import ConfigError
from finetune.config import check_task

TASKS = sorted(p.stem for p in (CONFIG_DIR / "task").glob("*.yaml"))
MODELS = sorted(p.stem for p in (CONFIG_DIR / "model").glob("*.yaml"))


def test_defaults_are_sst2_on_gpt2_from_the_hub():
    cfg = compose_config()
    assert cfg.task.name == "sst2"
    assert cfg.model.name_or_path == "gpt2"
    assert cfg.task.hub.path == "nyu-mll/glue" and cfg.task.hub.name == "sst2"
    assert cfg.data_dir is None
    assert cfg.trainer.mixed_precision == "no"
    validate(cfg)


@pytest.mark.parametrize("task", TASKS)
def test_every_task_composes_and_is_consistent(task):
    cfg = compose_config([f"task={task}"])
    assert cfg.task.name == task
    validate(cfg)
    check_task(cfg.task)


@pytest.mark.parametrize("model", MODELS)
def test_every_model_composes(model):
    cfg = compose_config([f"model={model}"])
    assert cfg.model.name_or_path


def test_quickstart_experiment_is_offline_and_tiny():
    cfg = compose_config(["experiment=quickstart"])
    assert cfg.task.name == "quickstart"
    assert cfg.model.from_scratch and cfg.model.n_layer == 2
    assert cfg.data_dir.endswith("data")


def test_command_line_overrides_reach_the_schema():
    cfg = compose_config(["trainer.max_steps=300", "optim.lr=1e-4", "trainer.mixed_precision=bf16", "seed=3"])
    assert cfg.trainer.max_steps == 300 and cfg.optim.lr == 1e-4 and cfg.seed == 3
    assert cfg.trainer.mixed_precision == "bf16"


def test_wrong_type_fails_at_compose_time():
    with pytest.raises(Exception, match="batch_size"):
        compose_config(["trainer.batch_size=many"])


def test_unknown_key_fails_at_compose_time():
    with pytest.raises(Exception, match="btach_size"):
        compose_config(["trainer.btach_size=3"])


@pytest.mark.parametrize(
    "override, key",
    [("optim.lr=-1", "optim.lr"), ("trainer.batch_size=0", "trainer.batch_size"), ("optim.warmup_ratio=1.5", "optim.warmup_ratio")],
)
def test_out_of_range_values_name_the_key(override, key):
    cfg = compose_config([override])
    with pytest.raises(ConfigError, match=key):
        validate(cfg)


def test_peft_is_off_by_default_and_peft_lora_composes_to_the_typed_schema():
    from omegaconf import OmegaConf

    from finetune.config import PeftConfig

    assert compose_config().peft is None
    cfg = compose_config(["peft=lora", "peft.target_modules=[c_attn,c_proj]", "model.activation_checkpointing=true"])
    assert OmegaConf.get_type(cfg, "peft") is PeftConfig
    assert (cfg.peft.method, cfg.peft.r, cfg.peft.alpha, list(cfg.peft.target_modules)) == ("lora", 8, 16.0, ["c_attn", "c_proj"])
    assert cfg.model.activation_checkpointing is True
    validate(cfg)
    with pytest.raises(Exception, match="peft.rank"):
        compose_config(["peft=lora", "peft.rank=4"])
