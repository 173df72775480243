"""The trainable model: the backbone plus one head (its export and loading: finetune.models.artifacts)."""

from __future__ import annotations

from torch import nn

from finetune.models.heads import HEADS, Head, lm_loss_sum, lm_target_count, skip_padding_check


class TaskModel(nn.Module):
    """Backbone + head. The loss is a sum over the batch's units divided by `loss_normalizers`
    (the units of the whole optimizer step, see finetune.training.loop); without normalizers it
    is the batch mean.

    With `aux_lm_weight` (GPT-1's λ) > 0, training adds λ times the LM loss over the real tokens of
    every sequence the head read (each multiple-choice candidate, both orders of a pair, every span
    window; never a pad), a token mean over the whole step like the task loss; `loss_terms` then
    holds both parts (logged as train/task_loss and train/lm_loss). The LM head is the tied
    embedding matrix, so nothing is added to the model or its export.
    """

    def __init__(self, backbone: nn.Module, head: Head, aux_lm_weight: float = 0.0):
        super().__init__()
        skip_padding_check(backbone)
        self.backbone = backbone
        self.head = head
        self.aux_lm_weight = float(aux_lm_weight)

    def loss_counts(self, batch) -> dict:
        """Units each loss term averages over: the task loss over examples (span QA: windows; the
        lm head: predicted tokens), the auxiliary LM loss over the real next-token targets of every
        sequence read."""
        counts = {"task": self.head.loss_units(batch["labels"])}
        if self.aux_lm_weight > 0:
            counts["lm"] = sum(lm_target_count(mask) for mask in self.head.sequence_masks(batch))
        return counts

    def forward(self, labels=None, loss_normalizers=None, **batch):
        reads = [] if self.aux_lm_weight > 0 and labels is not None else None
        logits = self.head(self.backbone, batch, reads)
        if labels is None:
            return {"loss": None, "logits": logits}
        normalizers = loss_normalizers or self.loss_counts({**batch, "labels": labels})
        loss = self.head.loss(logits, labels, reduction="sum") / normalizers["task"]
        if reads is None:
            return {"loss": loss, "logits": logits}
        lm_loss = lm_loss_sum(self.backbone, reads) / normalizers["lm"]
        return {"loss": loss + self.aux_lm_weight * lm_loss, "logits": logits,
                "loss_terms": {"task_loss": loss, "lm_loss": lm_loss}}


def build_head(name: str, hidden_size: int, num_labels: int, dropout: float, args: dict,
               init_std: float | None = None) -> Head:
    """`init_std`: draw the head's linear weights from N(0, init_std) with zero biases, as GPT-2
    initialises its own layers and transformers its task heads (config.initializer_range)."""
    head = HEADS[name](hidden_size, num_labels, dropout, args)
    if init_std is not None:
        for module in head.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, mean=0.0, std=init_std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
    return head
