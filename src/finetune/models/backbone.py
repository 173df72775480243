"""Load the tokenizer and the GPT-2 backbone, offline-safe and always in fp32 weights.

transformers 5 keeps a checkpoint's saved dtype; an fp16 checkpoint trained in fp16 parameters
loses ~20 points on SST-2, so the backbone is always loaded in fp32 and speed comes from autocast.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors import SafetensorError
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel, GPT2Model

from finetune.data.formats import configure_tokenizer
from finetune.errors import HubUnavailableError, ModelError
from finetune.models.heads import HEADS
from finetune.models.manifest import read_manifest

log = logging.getLogger(__name__)


def looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or Path(name).expanduser().exists() or name.count("/") > 1


def _check_source(name: str, key: str, offline: bool, what: str) -> str:
    if looks_like_path(name):
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


def _first_line(err: BaseException) -> str:
    return next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)


TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer_config.json")


def load_tokenizer(model_cfg, offline: bool):
    key = "model.tokenizer" if model_cfg.tokenizer else "model.name_or_path"
    name = _check_source(model_cfg.tokenizer or model_cfg.name_or_path, key, offline, "tokenizer")
    if Path(name).is_dir() and not any((Path(name) / f).is_file() for f in TOKENIZER_FILES):
        raise ModelError(
            f"{key} '{name}' has no tokenizer files ({', '.join(TOKENIZER_FILES)}); "
            f"set model.tokenizer=<a save_pretrained tokenizer directory>"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=model_cfg.trust_remote_code)
    except (OSError, ValueError) as err:
        if offline and not Path(name).exists():
            raise _hub_error(name, key, "tokenizer") from err
        raise ModelError(f"{key} '{name}': no tokenizer could be loaded ({_first_line(err)})") from err
    if not getattr(tokenizer, "is_fast", False):
        raise ModelError(f"{key} '{name}': a fast (tokenizers) tokenizer is required")
    base_vocab = len(tokenizer)
    configure_tokenizer(tokenizer, model_cfg.gpt1_tokens)
    return tokenizer, base_vocab


DROPOUT_ATTRIBUTES = ("resid_pdrop", "embd_pdrop", "attn_pdrop")  # GPT-2's config names


def _dropout_overrides(model_cfg) -> dict:
    dropout = model_cfg.get("dropout")
    return {} if dropout is None else {name: float(dropout) for name in DROPOUT_ATTRIBUTES}


def _fuse_gelu(model_cfg, config) -> None:
    """`model.fused_gelu`: GPT-2's `gelu_new` (the tanh GELU written as eight tensor operations, most
    of them keeping a tensor for the backward pass) becomes transformers' `gelu_pytorch_tanh`, torch's fused
    kernel of the same formula (at most 4.8e-7 apart in fp32): the activations a training step keeps
    fall by a third (mini model, batch 32 x 60: 250 -> 160 MiB), and the step is a few percent
    faster (README). The export's config names the function it was trained with. Off by default for now."""
    if model_cfg.fused_gelu and getattr(config, "activation_function", None) == "gelu_new":
        config.activation_function = "gelu_pytorch_tanh"


def load_backbone(model_cfg, tokenizer, base_vocab: int, offline: bool) -> torch.nn.Module:
    """The pretrained (or, with from_scratch, randomly initialised) decoder, in fp32."""
    if model_cfg.from_scratch:
        overrides = {
            k: model_cfg[k] for k in ("n_layer", "n_embd", "n_head", "n_positions") if model_cfg[k] is not None
        }
        overrides.update(_dropout_overrides(model_cfg))
        config = GPT2Config(vocab_size=base_vocab, bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id, **overrides)
        config._attn_implementation = model_cfg.attn_implementation
        _fuse_gelu(model_cfg, config)
        backbone = GPT2Model(config)
    else:
        name = _check_source(model_cfg.name_or_path, "model.name_or_path", offline, "model")
        if Path(name).is_dir() and (Path(name) / "adapter_config.json").is_file():
            raise ModelError(
                f"model.name_or_path '{name}' is a LoRA adapter, not a model: fine-tune from the run's merged model "
                f"(its model/ directory) or from the adapter's base model (adapter_config.json: base_model_name_or_path)"
            )
        if Path(name).is_dir() and not (Path(name) / "config.json").is_file():
            raise ModelError(f"model.name_or_path '{name}' is not a model directory (no config.json)")
        try:
            config = AutoConfig.from_pretrained(name, trust_remote_code=model_cfg.trust_remote_code)
            for key, value in _dropout_overrides(model_cfg).items():
                if hasattr(config, key):
                    setattr(config, key, value)
            _fuse_gelu(model_cfg, config)
            backbone = AutoModel.from_pretrained(
                name,
                config=config,
                dtype=torch.float32,
                attn_implementation=model_cfg.attn_implementation,
                trust_remote_code=model_cfg.trust_remote_code,
            )
        except OSError as err:
            if offline and not Path(name).exists():
                raise _hub_error(name, "model.name_or_path", "model") from err
            raise ModelError(f"model.name_or_path '{name}': could not load weights ({_first_line(err)})") from err
        except (SafetensorError, ValueError, RuntimeError, EOFError) as err:  # truncated/corrupt weights, wrong shapes
            raise ModelError(
                f"model.name_or_path '{name}': could not load the model ({type(err).__name__}: {_first_line(err)}); "
                f"its files may be corrupt or truncated: save or download it again"
            ) from err
        if base_vocab > config.vocab_size:
            tokenizer_source = model_cfg.tokenizer or model_cfg.name_or_path
            raise ModelError(
                f"tokenizer '{tokenizer_source}' has {base_vocab} tokens but model '{name}' embeds only "
                f"{config.vocab_size}: the tokenizer does not belong to this model; set model.tokenizer to the "
                f"model's own tokenizer (or leave it null to use model.name_or_path's)"
            )
    if len(tokenizer) > backbone.get_input_embeddings().num_embeddings:
        backbone.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    backbone.config.pad_token_id = tokenizer.pad_token_id
    return backbone.float()


def enable_activation_checkpointing(backbone) -> None:
    """Recompute every block's activations during the backward pass (non-reentrant torch checkpointing).

    transformers 5.24 renamed `gradient_checkpointing_enable` to `activation_checkpointing_enable`
    (the old name warns, and goes in v6); earlier 5.x releases only have the old one.
    `backbone` may be a peft model: the transformers model inside it is switched.
    """
    model = backbone.get_base_model() if hasattr(backbone, "get_base_model") else backbone
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ModelError(f"model.activation_checkpointing=true: {type(model).__name__} does not support activation checkpointing")
    non_reentrant = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=non_reentrant)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=non_reentrant)


def check_backbone_for_task(model_cfg, task_cfg, num_labels: int, backbone) -> None:
    """The task must fit the model: its max_length in the context window, and when the model is a
    fine-tuned classifier (a finetune export, or a *ForSequenceClassification checkpoint), its label
    count must be this task's (else the head would be silently dropped for one of another shape).
    A language-model export (stage 1) starts any task; any backbone starts a language model."""
    n_positions = getattr(backbone.config, "n_positions", None)
    if n_positions is not None and task_cfg.max_length > n_positions:
        raise ModelError(
            f"task.max_length={task_cfg.max_length} is longer than the model's context window "
            f"({n_positions} positions): set task.max_length<={n_positions}"
        )
    if model_cfg.from_scratch or not HEADS[task_cfg.head].needs_labels:  # any backbone starts a label-free head
        return
    path = Path(model_cfg.name_or_path).expanduser()
    if not path.is_dir():
        return
    config_file = path / "config.json"
    theirs, what = None, None
    manifest = read_manifest(path)
    if manifest is not None and manifest.head in HEADS:
        if not HEADS[manifest.head].needs_labels:  # stage 1 of two: an adapted LM
            return
        theirs = int(manifest.num_labels)
        what = f"fine-tuned for task '{manifest.task}' with a {theirs}-output '{manifest.head}' head"
    if theirs is None and config_file.is_file():
        try:
            config = json.loads(config_file.read_text())
        except (OSError, ValueError):
            config = {}
        if any(str(a).endswith("ForSequenceClassification") for a in config.get("architectures") or []):
            theirs = int(config.get("num_labels") or len(config.get("id2label") or {}) or 2)
            what = f"a sequence classifier with {theirs} labels ({', '.join(config['architectures'])})"
    if theirs is not None and theirs != num_labels:
        raise ModelError(
            f"model.name_or_path '{model_cfg.name_or_path}' is {what}, but task '{task_cfg.name}' needs "
            f"{num_labels} output(s) ({'regression' if task_cfg.labels is None else 'labels ' + ', '.join(task_cfg.labels)}): "
            f"start from a pretrained (not fine-tuned) model, or from one fine-tuned on a task with the same labels"
        )


# transformers classes of fine-tuned task models: their weights have no language-modelling head.
TASK_ARCHITECTURE_SUFFIXES = ("ForSequenceClassification", "ForQuestionAnswering", "ForTokenClassification", "ForMultipleChoice")


def _not_a_language_model(name: str, path: Path) -> str | None:
    """Why the directory at `path` has no language-modelling head (a fine-tuned classifier), or None."""
    if (path / "finetune_checkpoint.json").is_file():
        return "is a training checkpoint (checkpoints/step-N) of a task model, not a language model"
    manifest = read_manifest(path)
    if manifest is not None and (manifest.head not in HEADS or HEADS[manifest.head].has_own_weights):
        return f"is a model fine-tuned with a '{manifest.head}' head (finetune.json), which has no language-modelling head"
    config_file = path / "config.json"
    if config_file.is_file():
        try:
            architectures = json.loads(config_file.read_text()).get("architectures") or []
        except (OSError, ValueError, AttributeError):
            architectures = []
        tasks = [str(a) for a in architectures if str(a).endswith(TASK_ARCHITECTURE_SUFFIXES)]
        if tasks:
            return f"is a fine-tuned {', '.join(tasks)} model, which has no language-modelling head"
    return None


def load_causal_lm(model_cfg, tokenizer, base_vocab: int, offline: bool) -> torch.nn.Module:
    """A pretrained language model (GPT2LMHeadModel or any causal LM) in fp32, for zero-shot scoring.

    model.name_or_path: a Hub id, a pretrained save_pretrained directory, or the `model/` export of a
    language-modelling run. A fine-tuned classifier (sequence classification, QA, a training
    checkpoint) has no LM head: that is one line, not a silently re-tied head.
    """
    if model_cfg.from_scratch:
        overrides = {k: model_cfg[k] for k in ("n_layer", "n_embd", "n_head", "n_positions") if model_cfg[k] is not None}
        config = GPT2Config(vocab_size=base_vocab, bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id, **overrides)
        config._attn_implementation = model_cfg.attn_implementation
        model = GPT2LMHeadModel(config)
    else:
        name = _check_source(model_cfg.name_or_path, "model.name_or_path", offline, "model")
        path = Path(name)
        if path.is_dir():
            if not (path / "config.json").is_file():
                raise ModelError(f"model.name_or_path '{name}' is not a model directory (no config.json)")
            why = _not_a_language_model(name, path)
            if why:
                raise ModelError(f"model.name_or_path '{name}' {why}: mode=zeroshot scores a pretrained language model "
                                 f"(a Hub id such as gpt2, a pretrained directory, or the model/ of a language-modelling run)")
        try:
            model, info = AutoModelForCausalLM.from_pretrained(
                name, dtype=torch.float32, attn_implementation=model_cfg.attn_implementation,
                trust_remote_code=model_cfg.trust_remote_code, output_loading_info=True)
        except OSError as err:
            if offline and not path.exists():
                raise _hub_error(name, "model.name_or_path", "model") from err
            raise ModelError(f"model.name_or_path '{name}': could not load weights ({_first_line(err)})") from err
        except (SafetensorError, ValueError, RuntimeError, EOFError) as err:
            raise ModelError(f"model.name_or_path '{name}': could not load it as a causal language model "
                             f"({type(err).__name__}: {_first_line(err)})") from err
        missing = list(info.get("missing_keys") or [])
        if missing:  # e.g. an untied lm_head: it would be scored with random weights
            raise ModelError(f"model.name_or_path '{name}' lacks weights of a causal language model ({', '.join(sorted(missing)[:3])}"
                             f"{', ...' if len(missing) > 3 else ''}): it has no language-modelling head")
        if base_vocab > model.config.vocab_size:
            raise ModelError(f"tokenizer '{model_cfg.tokenizer or model_cfg.name_or_path}' has {base_vocab} tokens but model "
                             f"'{name}' embeds only {model.config.vocab_size}: the tokenizer does not belong to this model")
    if model.get_output_embeddings() is None:
        raise ModelError(f"model.name_or_path '{model_cfg.name_or_path}' has no language-modelling head (output embeddings)")
    model.config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.float().eval()
