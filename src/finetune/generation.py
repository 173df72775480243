"""Text from a language model: its generation config, and samples written at each evaluation.

`task.head_args.generation` holds `transformers.GenerationConfig` fields (default: greedy, 40 new
tokens); the same config is saved with the exported `model/`, so `pipeline("text-generation")`
continues text the way the samples did. `task.head_args.sample_prompts` are continued at every
evaluation, logged, sent to the tracker and appended to `<run dir>/samples.jsonl`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from transformers import GenerationConfig, GPT2LMHeadModel

from finetune.errors import ConfigError

log = logging.getLogger("finetune")

DEFAULT_GENERATION = {"max_new_tokens": 40, "do_sample": False}


def _first_line(err: Exception) -> str:
    return "; ".join(line.strip(" -") for line in str(err).splitlines() if line.strip() and not line.startswith("If you"))


def generation_config(options=None, tokenizer=None) -> GenerationConfig:
    """The GenerationConfig of `head_args.generation` (checked; ConfigError names the field), with
    the tokenizer's end-of-text token as bos/eos/pad when a tokenizer is given."""
    if isinstance(options, DictConfig):
        options = OmegaConf.to_container(options, resolve=True)
    options = dict(options or {})
    known = set(GenerationConfig().to_dict())
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"task.head_args.generation: unknown field(s) {unknown}; it takes transformers.GenerationConfig "
                          f"fields such as max_new_tokens, do_sample, temperature, top_k, top_p, repetition_penalty")
    try:
        config = GenerationConfig(**{**DEFAULT_GENERATION, **options})
        config.validate(strict=True)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"task.head_args.generation = {options}: {_first_line(err)}") from None
    if tokenizer is not None:
        config.bos_token_id = config.eos_token_id = tokenizer.eos_token_id
        config.pad_token_id = tokenizer.pad_token_id
    return config


def causal_lm(backbone) -> GPT2LMHeadModel:
    """A `GPT2LMHeadModel` around the training backbone, sharing its weights (the LM head is the
    token embedding): built on the meta device, so no second copy of the model is allocated."""
    with torch.device("meta"):
        lm = GPT2LMHeadModel(backbone.config)
    lm.transformer = backbone
    lm.lm_head.weight = backbone.get_input_embeddings().weight
    return lm


class SampleWriter:
    """Continues the sample prompts with the model being trained, on the main process.

    Sampling (`generation.do_sample`) draws from a generator seeded with `seed` at every call, inside
    a forked RNG state, so samples at different steps are comparable and training's own random
    stream (dropout, data order) is untouched: a resumed run stays identical to an uninterrupted one.
    """

    def __init__(self, prompts: list[str], config: GenerationConfig, tokenizer, path: Path, seed: int, accelerator):
        self.prompts, self.config, self.tokenizer = list(prompts), config, tokenizer
        self.path, self.seed, self.accelerator = Path(path), seed, accelerator

    def _prompt_ids(self, prompt: str, n_positions: int) -> list[int]:
        ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"] or [self.tokenizer.eos_token_id]  # "" = unconditional
        room = max(1, n_positions - (self.config.max_new_tokens or 0))
        return ids[-room:]

    @torch.no_grad()
    def generate(self, backbone) -> list[str]:
        lm = causal_lm(backbone)
        was_training = backbone.training
        lm.eval()
        device = backbone.get_input_embeddings().weight.device
        devices = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
        texts = []
        try:
            with torch.random.fork_rng(devices=devices):
                for prompt in self.prompts:
                    torch.manual_seed(self.seed)
                    ids = torch.tensor([self._prompt_ids(prompt, backbone.config.n_positions)], device=device)
                    out = lm.generate(ids, attention_mask=torch.ones_like(ids), generation_config=self.config)
                    texts.append(self.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
        finally:
            backbone.train(was_training)
        return texts

    def __call__(self, model, step: int | None) -> list[dict]:
        if not self.accelerator.is_main_process:
            return []
        rows = [{"step": step, "prompt": prompt, "continuation": text}
                for prompt, text in zip(self.prompts, self.generate(model.backbone))]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        for i, row in enumerate(rows):
            log.info("sample %d at step %s: %r -> %r", i, step, row["prompt"], row["continuation"])
        if step is not None:
            self.accelerator.log({f"samples/{i}": row["prompt"] + row["continuation"] for i, row in enumerate(rows)}, step=step)
        return rows


def sample_hooks(cfg, tokenizer, run_dir: Path, accelerator) -> list[SampleWriter]:
    """What runs at each evaluation of a language model: the sample writer, when there are prompts."""
    prompts = cfg.task.head_args.get("sample_prompts")
    if not prompts:
        return []
    config = generation_config(cfg.task.head_args.get("generation"), tokenizer)
    return [SampleWriter(list(prompts), config, tokenizer, Path(run_dir) / "samples.jsonl", cfg.seed, accelerator)]
