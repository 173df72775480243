"""Load the tokenizer and the GPT-2 backbone, offline-safe and always in fp32 weights.

transformers 5 keeps a checkpoint's saved dtype; an fp16 checkpoint trained in fp16 parameters
loses ~20 points on SST-2, so the backbone is always loaded in fp32 and speed comes from autocast.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModel, AutoTokenizer, GPT2Config, GPT2Model

from finetune.data.formats import configure_tokenizer
from finetune.errors import HubUnavailableError, ModelError

log = logging.getLogger(__name__)


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or Path(name).expanduser().exists() or name.count("/") > 1


def _check_source(name: str, key: str, offline: bool, what: str) -> str:
    if _looks_like_path(name):
        path = Path(name).expanduser()
        if not path.exists():
            raise ModelError(f"{key} '{name}' does not exist")
        if not path.is_dir():
            raise ModelError(f"{key} '{name}' is not a directory (expected a save_pretrained {what} directory)")
        return str(path)
    return name


def _hub_error(name: str, key: str, what: str) -> HubUnavailableError:
    return HubUnavailableError(
        f"{what} '{name}' must come from the Hugging Face Hub, which is not reachable (offline); "
        f"set {key}=<local save_pretrained directory> (e.g. ../shared/data/models/gpt2-mini-pretrained)"
    )


def load_tokenizer(model_cfg, offline: bool):
    key = "model.tokenizer" if model_cfg.tokenizer else "model.name_or_path"
    name = _check_source(model_cfg.tokenizer or model_cfg.name_or_path, key, offline, "tokenizer")
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=model_cfg.trust_remote_code)
    except OSError as err:
        if offline and not Path(name).exists():
            raise _hub_error(name, key, "tokenizer") from err
        raise ModelError(f"{key} '{name}': no tokenizer could be loaded ({str(err).splitlines()[0]})") from err
    if not getattr(tokenizer, "is_fast", False):
        raise ModelError(f"{key} '{name}': a fast (tokenizers) tokenizer is required")
    base_vocab = len(tokenizer)
    configure_tokenizer(tokenizer, model_cfg.gpt1_tokens)
    return tokenizer, base_vocab


def load_backbone(model_cfg, tokenizer, base_vocab: int, offline: bool) -> torch.nn.Module:
    """The pretrained (or, with from_scratch, randomly initialised) decoder, in fp32."""
    if model_cfg.from_scratch:
        overrides = {
            k: model_cfg[k] for k in ("n_layer", "n_embd", "n_head", "n_positions") if model_cfg[k] is not None
        }
        config = GPT2Config(vocab_size=base_vocab, bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id, **overrides)
        config._attn_implementation = model_cfg.attn_implementation
        backbone = GPT2Model(config)
    else:
        name = _check_source(model_cfg.name_or_path, "model.name_or_path", offline, "model")
        if Path(name).is_dir() and not (Path(name) / "config.json").is_file():
            raise ModelError(f"model.name_or_path '{name}' is not a model directory (no config.json)")
        try:
            config = AutoConfig.from_pretrained(name, trust_remote_code=model_cfg.trust_remote_code)
            backbone = AutoModel.from_pretrained(
                name,
                dtype=torch.float32,
                attn_implementation=model_cfg.attn_implementation,
                trust_remote_code=model_cfg.trust_remote_code,
            )
        except OSError as err:
            if offline and not Path(name).exists():
                raise _hub_error(name, "model.name_or_path", "model") from err
            raise ModelError(f"model.name_or_path '{name}': could not load weights ({str(err).splitlines()[0]})") from err
        if base_vocab > config.vocab_size:
            raise ModelError(
                f"tokenizer has {base_vocab} tokens but model '{name}' embeds only {config.vocab_size}: "
                f"model.tokenizer does not belong to this model"
            )
    if len(tokenizer) > backbone.get_input_embeddings().num_embeddings:
        backbone.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    backbone.config.pad_token_id = tokenizer.pad_token_id
    return backbone.float()
