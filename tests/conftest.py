"""Shared fixtures: composing the real Hydra config, the tiny model, and ../shared/data."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import open_dict

from finetune.config import register_configs

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "configs"
SHARED_DATA = Path(os.environ.get("FINETUNE_SHARED_DATA", ROOT.parent / "shared" / "data"))
MINI_MODEL = SHARED_DATA / "models" / "gpt2-mini-pretrained"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

requires_shared_data = pytest.mark.skipif(
    not (SHARED_DATA / "glue").is_dir() or not MINI_MODEL.is_dir(),
    reason="../shared/data (real GLUE files and the mini pretrained GPT-2) is not present",
)

register_configs()


def compose_config(overrides: list[str] | None = None, output_dir: Path | None = None):
    """The real train.yaml composed with overrides, as train.py would see it (minus Hydra runtime)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides or [], return_hydra_config=False)
    if output_dir is not None:
        with open_dict(cfg):
            cfg.paths.output_dir = str(output_dir)
    return cfg


TINY_FAST = [
    "model=tiny",
    "trainer.tracker=null",
    "trainer.progress_bar=false",
]


def run_train(args: list[str], cwd: Path = ROOT, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run train.py in a subprocess, as a user would."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args],
        cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env,
    )


@pytest.fixture
def tiny_tokenizer():
    from transformers import AutoTokenizer

    from finetune.data.formats import configure_tokenizer

    tokenizer = AutoTokenizer.from_pretrained(ROOT / "data" / "tiny-tokenizer")
    configure_tokenizer(tokenizer, gpt1_tokens=False)
    return tokenizer


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    """A save_pretrained GPT-2 LM in the tiny model's shape, with the tiny tokenizer (random init,
    seeded): a local base model for LoRA, which the adapters of a run record and load on."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    path = tmp_path_factory.mktemp("tiny-base")
    tokenizer = AutoTokenizer.from_pretrained(ROOT / "data" / "tiny-tokenizer")
    config = GPT2Config(vocab_size=len(tokenizer), n_layer=2, n_embd=64, n_head=2, n_positions=256,
                        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def lora_args(base: Path) -> list[str]:
    """The quickstart on `tiny_base` with LoRA on c_attn and c_fc: 4 steps per epoch, 9 steps, a
    checkpoint every 3 (all kept). Dropout is on everywhere, so a resumed run matches this one only
    if the RNG state is restored exactly."""
    return [
        "experiment=quickstart", *TINY_FAST, "model.from_scratch=false", f"model.name_or_path={base}", "peft=lora",
        "peft.target_modules=[c_attn,c_fc]", "peft.dropout=0.1", "model.dropout=0.1", "model.head_dropout=0.1",
        "optim.lr=5e-3", "trainer.max_train_samples=64", "trainer.max_eval_samples=48", "trainer.batch_size=16",
        "trainer.max_steps=9", "trainer.eval_every=3", "trainer.log_every=3", "trainer.save_total_limit=5", "seed=5",
    ]


@pytest.fixture(scope="session")
def lora_run(tmp_path_factory, tiny_base) -> Path:
    """A finished LoRA training run (in this process): checkpoints/, model/ (merged) and adapter/."""
    from test_bad_inputs import train_in_process

    run_dir = tmp_path_factory.mktemp("lora") / "run"
    result = train_in_process(lora_args(tiny_base), run_dir)
    assert result.code in (0, None), result.stderr[-3000:]
    return run_dir
