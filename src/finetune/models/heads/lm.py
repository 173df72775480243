"""GPT-2's own LM head: language modelling (GPT-1's stage 1) and the auxiliary LM loss of task heads.

The head is the token embedding matrix (tied), so it has no weights of its own and a pretrained LM
is already complete: it can be evaluated as it is, and it exports as `GPT2LMHeadModel`.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from finetune.data.blocks import IGNORE_INDEX, check_stride
from finetune.errors import ConfigError, DataError
from finetune.generation import generation_config
from finetune.models.heads.base import Head


def lm_logits(backbone, hidden: torch.Tensor) -> torch.Tensor:
    """GPT-2's LM head: next-token logits from the (tied) token embedding matrix."""
    return F.linear(hidden, backbone.get_input_embeddings().weight)


def lm_target_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions whose hidden state predicts a real next token of the same sequence: both the position
    and the next are real (pads never count, as inputs or as targets) and belong to one sequence.
    `attention_mask` is a padding mask (1 real, 0 pad) or a packed batch's `sequence_ids` (1, 2, ...
    per sequence of a row, 0 on padding), where the last token of a sequence predicts nothing.
    Shape (..., length - 1)."""
    current, following = attention_mask[..., :-1], attention_mask[..., 1:]
    return (following != 0) & (current == following)


def lm_target_count(attention_mask: torch.Tensor) -> torch.Tensor:
    return lm_target_positions(attention_mask).sum()


def lm_loss_sum(backbone, reads: list) -> torch.Tensor:
    """Summed next-token cross-entropy over the real tokens of every sequence read (`reading.Read`).

    Logits are computed only at target positions (real tokens followed by a real token), so pads
    cost neither memory nor compute.
    """
    if not reads:
        raise RuntimeError("the auxiliary LM loss is on, but the head recorded no sequence it read (see encode_last)")
    total = 0
    for read in reads:
        targets = lm_target_positions(read.attention_mask)
        logits = lm_logits(backbone, read.hidden[:, :-1][targets]).float()
        total = total + F.cross_entropy(logits, read.input_ids[:, 1:][targets], reduction="sum")
    return total


class LanguageModelHead(Head):
    """Next-token logits from the tied token embeddings, over blocks of `task.max_length` tokens
    (finetune.data.blocks); the loss is the next-token cross-entropy per predicted token, normalised
    over the whole optimizer step like every loss. head_args: `stride` (strided evaluation),
    `sample_prompts` and `generation` (text generated at each evaluation, see finetune.generation;
    `generation` is also the export's generation config).
    """

    input_format = "blocks"
    evaluator = "tokens"
    required_roles = ("text",)
    optional_roles = ("choices", "label")  # the labelled choice is appended to the document
    text_roles = ()  # blank documents are skipped, not errors
    target_roles = ()
    trained_args = ()  # stride, prompts and generation are the evaluation's choice, not the model's
    predicts = False
    no_predictions = ("is language modelling, with no labels to predict; use mode=evaluate for perplexity, "
                      "task.head_args.sample_prompts for samples, or pipeline('text-generation', model=<run dir>/model)")
    has_own_weights = False
    needs_labels = False
    generates = True
    continues_prompts = True
    exports_to = "GPT2LMHeadModel"
    export_module = None  # the LM head is the embedding matrix: exported with the backbone
    auto_class = "AutoModelForCausalLM"
    peft_task_type = "CAUSAL_LM"
    card_task = "text-generation"

    @classmethod
    def check_config(cls, cfg) -> None:
        task = cfg.task
        if task.aux_lm_weight > 0:
            raise ConfigError(f"task.aux_lm_weight={task.aux_lm_weight}: the auxiliary LM loss is for task heads; the 'lm' "
                              f"head's loss already is the LM loss (set task.aux_lm_weight=0)")
        if cfg.model.gpt1_tokens:
            raise ConfigError("model.gpt1_tokens=true: the 'lm' head reads raw text with no input template; "
                              "add GPT-1's tokens in the downstream task instead")
        args = dict(task.head_args)
        prompts = args.get("sample_prompts")
        if prompts is not None and (isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts)):
            raise ConfigError(f"task.head_args.sample_prompts = {prompts!r}: expected a list of strings "
                              f"(e.g. task.head_args.sample_prompts='[\"Once upon a time\"]')")
        generation_config(args.get("generation"))  # transformers' GenerationConfig checks its own fields
        try:
            check_stride(args, task.max_length)
        except DataError as err:
            raise ConfigError(str(err)) from None

    @property
    def regression(self) -> bool:
        return False

    def export_config(self, config) -> None:
        return None

    def forward(self, backbone, batch, reads=None):
        hidden = backbone(input_ids=batch["input_ids"], use_cache=False).last_hidden_state  # blocks: never padded
        return lm_logits(backbone, hidden)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """Token t+1 from position t; positions labelled IGNORE_INDEX (before a window's first scored token) do not count.

        The labels are shifted, not the logits (as transformers' causal-LM loss does): slicing the
        logits would copy the largest tensor of the step."""
        targets = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
        return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX, reduction=reduction)

    def loss_units(self, labels: torch.Tensor):
        return (labels[:, 1:] != IGNORE_INDEX).sum()

    @torch.no_grad()
    def score_tokens(self, backbone, input_ids: torch.Tensor, labels: torch.Tensor, max_logits: int = 1 << 25):
        """Per sequence: summed NLL and number of scored tokens; per position: the predicted and the
        target token (IGNORE_INDEX where not scored). Logits are made a few rows at a time (at most
        `max_logits` floats), so evaluation in large batches stays within memory."""
        hidden = backbone(input_ids=input_ids, use_cache=False).last_hidden_state[:, :-1]
        targets = labels[:, 1:]
        vocab = backbone.get_input_embeddings().weight.shape[0]
        rows = max(1, max_logits // max(1, hidden.shape[1] * vocab))
        nll, predicted = [], []
        for start in range(0, hidden.shape[0], rows):
            logits = lm_logits(backbone, hidden[start : start + rows]).float()
            nll.append(F.cross_entropy(logits.transpose(1, 2), targets[start : start + rows],
                                       ignore_index=IGNORE_INDEX, reduction="none").sum(-1))
            predicted.append(logits.argmax(-1))
        return torch.cat(nll), (targets != IGNORE_INDEX).sum(-1), torch.cat(predicted), targets

    @classmethod
    def plain_pipeline(cls, manifest) -> str | None:
        return "text-generation"

    @classmethod
    def card_labels(cls, manifest) -> list[str]:
        return ["## Language model", "GPT-2's LM head, tied to the token embeddings (`GPT2LMHeadModel`)."]

    @classmethod
    def card_loading(cls, manifest) -> list[str] | None:
        return [
            "```python",
            "from transformers import pipeline",
            'generate = pipeline("text-generation", model="<this directory>")',
            'print(generate("The history of the city")[0]["generated_text"])',
            "```",
            "generation_config.json holds the generation settings the training samples used. As a backbone for a task:",
            "`python train.py task=<task> model.name_or_path=<this directory>` (the LM head is dropped, the task head added).",
        ]
