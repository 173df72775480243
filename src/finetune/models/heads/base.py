"""The `Head` base class: everything that differs between heads is declared here, per class.

Code elsewhere (data pipeline, export, LoRA, evaluation, inference, model card, modes) asks a head
class these attributes and methods and never compares against a head's name. A new head is one
subclass plus one entry in `finetune.models.heads.HEADS` (tests/test_toy_head.py adds one from a
test module).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from finetune.errors import ConfigError
from finetune.models.heads.reading import is_packed

SAMPLE_ARGS = ("sample_prompts", "generation")  # head_args of heads that continue sample prompts


class Head(nn.Module):
    # ---- input: the format its features come in (finetune.data.input_formats.FORMATS) and the column roles it reads
    input_format: ClassVar[str] = "text"
    required_roles: ClassVar[tuple] = ("text", "label")
    optional_roles: ClassVar[tuple] = ()
    text_roles: ClassVar[tuple] = ("text",)  # roles whose empty values are dropped or refused (task.on_empty_text)
    reads_packed: ClassVar[bool] = True  # reads padding-free packed batches (trainer.batching=packed) where its format packs
    target_roles: ClassVar[tuple] = ("label",)  # what the head predicts: never an input
    # head_args a fine-tuned model brings with it to evaluate/predict (its input format); None = all.
    trained_args: ClassVar[tuple | None] = None
    # ---- evaluation: how outputs are gathered, scored and written (finetune.training.evaluation.EVALUATORS)
    evaluator: ClassVar[str] = "classes"
    predicts: ClassVar[bool] = True  # mode=predict writes one prediction per example
    no_predictions: ClassVar[str] = ""  # when it does not: why, and what to use instead (after "task '<name>' ")
    # ---- abilities
    has_own_weights: ClassVar[bool] = True  # False: a pretrained backbone is already complete (evaluate it as it is)
    needs_labels: ClassVar[bool] = True  # False: label-agnostic, one trained model fits any task of the head
    generates: ClassVar[bool] = False  # its export generates text (a generation config, pipeline("text-generation"))
    continues_prompts: ClassVar[bool] = False  # takes head_args.sample_prompts (continued at each evaluation) and .generation
    zero_shot: ClassVar[str] = "scored"  # mode=zeroshot: scored answers (log-likelihoods) or a generated answer
    # ---- export: the transformers class the weights map onto, if any
    exports_to: ClassVar[str | None] = None
    export_module: ClassVar[str | None] = "score"  # the layer that becomes `<exports_to>.<export_module>`
    auto_class: ClassVar[str | None] = None  # transformers' Auto class of `exports_to` (model cards, adapters)
    peft_task_type: ClassVar[str | None] = None  # peft's task type for an adapter written for `exports_to`
    pipeline_task: ClassVar[str | None] = None  # the transformers pipeline finetune registers for it (finetune.pipelines)
    card_task: ClassVar[str] = "text-classification"  # the Hub task type of its model card's results

    def __init__(self, hidden_size: int, num_labels: int, dropout: float, args: dict):
        super().__init__()
        self.num_labels = num_labels
        self.args = dict(args)

    # ------------------------------------------------------------------ config
    @classmethod
    def format_for(cls, args: dict) -> str:
        return cls.input_format

    @classmethod
    def check_config(cls, cfg) -> None:
        """Head-specific config checks, before any data or model is loaded (ConfigError names the key)."""
        if cfg.trainer.batching == "packed" and not cls.reads_packed:
            raise ConfigError(f"trainer.batching=packed: the '{cfg.task.head}' head of task '{cfg.task.name}' reads padded "
                              f"batches only; use trainer.batching=bucketed (the default) or token_budget")
        if cls.continues_prompts:
            return
        for key in SAMPLE_ARGS:
            if key in cfg.task.head_args:
                raise ConfigError(f"task.head_args.{key}: text generation needs the 'lm' head, but task '{cfg.task.name}' "
                                  f"has head '{cfg.task.head}' (remove the key, or train a language-modelling task)")

    @classmethod
    def input_roles(cls, trained_with: list[str] | None = None) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(required, optional) roles it reads as input. `trained_with` (a manifest's `input_roles`)
        fixes the optional ones: a classifier trained on single texts takes no pair, one trained on pairs needs them."""
        inputs = [r for r in cls.required_roles if r not in cls.target_roles and r != "id"]
        optional = tuple(r for r in cls.optional_roles if r not in cls.target_roles and r != "id")
        if trained_with is not None:
            return tuple(inputs) + tuple(r for r in optional if r in trained_with), ()
        return tuple(inputs), optional

    @classmethod
    def transformers_num_labels(cls, num_labels: int) -> int:
        """`num_labels` of its `exports_to` config (span QA: a start and an end score)."""
        return num_labels

    # ------------------------------------------------------------------ training and scoring
    @property
    def regression(self) -> bool:
        return self.num_labels == 1

    def loss_units(self, labels: torch.Tensor):
        """How many units the task loss sums over in a batch: examples (or span windows)."""
        return len(labels)

    def sequence_masks(self, batch) -> list[torch.Tensor]:
        """Attention masks of every sequence this head reads in `batch` (the auxiliary LM loss counts their
        tokens); a packed batch has one tensor for all of them, its `sequence_ids`."""
        return [batch["sequence_ids"]] if is_packed(batch) else [batch["attention_mask"]]

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        if self.regression:
            return F.mse_loss(logits.squeeze(-1).float(), labels.float(), reduction=reduction)
        return F.cross_entropy(logits.float(), labels, reduction=reduction)

    def predictions(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.squeeze(-1).float() if self.regression else logits.argmax(-1)

    def export_config(self, config) -> None:
        """Set what `exports_to` reads from the transformers config (sequence classification)."""
        config.num_labels = self.num_labels
        config.problem_type = "regression" if self.regression else "single_label_classification"

    # ------------------------------------------------------------------ inference (finetune.inference.Predictor)
    @classmethod
    def check_inputs(cls, rows, labels: list[str] | None) -> None:
        """Refuse inputs this model cannot score (InputError), beyond the roles the rows were parsed into."""

    @classmethod
    def tidy_prediction(cls, row: dict, example: dict, labels: list[str] | None) -> dict:
        """A prediction row as `finetune.load(...).predict` returns it, given the example it is for."""
        return row

    # ------------------------------------------------------------------ model card (finetune.outputs.model_card)
    @classmethod
    def card_example(cls, manifest) -> str:
        """One example input, as Python source, in the form `Predictor.predict` and the finetune pipeline take."""
        return '"a gorgeous, witty film"'

    @classmethod
    def card_returns(cls, manifest) -> str:
        if manifest.get("labels") is None:
            return "`{'prediction': <score>}`"
        return "`{'prediction': <label>, 'probability': <its probability>, 'probabilities': {<label>: <probability>, ...}}`"

    @classmethod
    def card_framework_steps(cls, manifest) -> str:
        """What the framework's inference does besides the tokenizer's template (', both sentence orders')."""
        return ""

    @classmethod
    def plain_pipeline(cls, manifest) -> str | None:
        """transformers' own pipeline that gives the framework's predictions on this export, if one does."""
        return None

    @classmethod
    def card_transformers_usage(cls, manifest) -> list[str]:
        """Model card lines on using the directory with plain transformers (no finetune installed)."""
        return []

    @classmethod
    def card_loading(cls, manifest) -> list[str] | None:
        """The whole "How to load it" section, for heads that are not loaded through `finetune.load` (None: the default)."""
        return None

    @classmethod
    def card_labels(cls, manifest) -> list[str]:
        labels = manifest.get("labels")
        return ["## Labels", ", ".join(f"{i}: `{name}`" for i, name in enumerate(labels)) if labels else "One regression output (a score)."]
