"""Task heads on top of the backbone: one class per head (its own module), one entry in HEADS.

Each head class declares what differs between heads (`finetune.models.heads.base.Head`): its input
format and column roles, how it scores a batch, its loss and predictions, its evaluator, what it
exports to and what its model card says. Adding a head: docs/architecture.md.
"""

from finetune.models.heads.base import Head
from finetune.models.heads.choice import MultipleChoiceHead
from finetune.models.heads.lm import LanguageModelHead, lm_logits, lm_loss_sum, lm_target_count, lm_target_positions
from finetune.models.heads.reading import Read, encode_last, encode_packed, is_packed, pool_last_token, skip_padding_check
from finetune.models.heads.sequence import ClassificationHead, EntailmentHead, SimilarityHead
from finetune.models.heads.span import SpanHead

HEADS: dict[str, type[Head]] = {
    "classification": ClassificationHead,
    "entailment": EntailmentHead,
    "similarity": SimilarityHead,
    "multiple_choice": MultipleChoiceHead,
    "span": SpanHead,
    "lm": LanguageModelHead,
}

__all__ = [
    "HEADS", "Head", "ClassificationHead", "EntailmentHead", "SimilarityHead", "MultipleChoiceHead", "SpanHead",
    "LanguageModelHead", "Read", "encode_last", "encode_packed", "is_packed", "pool_last_token", "skip_padding_check",
    "lm_logits", "lm_loss_sum", "lm_target_count", "lm_target_positions",
]
