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
