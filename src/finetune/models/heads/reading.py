"""How heads read the backbone: the last real token of right-padded or packed sequences.

Shared by every head that pools one position per sequence; the auxiliary LM loss reads what
they recorded (`Read`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def pool_last_token(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Hidden state of each sequence's last real token, found from the attention mask.

    Not from `input_ids == pad_id`: the pad id is GPT-2's end-of-text token, which may also be a
    real token of the text or of the input template.
    """
    positions = torch.arange(attention_mask.shape[-1], device=attention_mask.device)
    last = (positions * attention_mask.to(positions.dtype)).argmax(-1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


@dataclass
class Read:
    """One batch of sequences a head ran through the backbone (for the auxiliary LM loss)."""

    hidden: torch.Tensor  # (sequences, length, width)
    input_ids: torch.Tensor  # (sequences, length)
    attention_mask: torch.Tensor  # (sequences, length): 1 on real tokens; packed rows: sequence ids (0 on padding)


def encode_last(backbone, input_ids, attention_mask, reads: list | None = None) -> torch.Tensor:
    """Last real token's hidden state of right-padded sequences (the collators always pad right).

    The backbone runs without the padding mask: under causal attention a real token never sees
    the pads that follow it, so its hidden state is exactly what the masked call gives (see
    tests/test_batching.py). Without a mask SDPA takes its causal kernel (flash attention on GPU),
    and transformers neither builds a 4-D mask nor checks it on the host (a device sync per step).
    `reads` (a list) collects the sequences and their hidden states for the auxiliary LM loss.
    """
    hidden = backbone(input_ids=input_ids, use_cache=False).last_hidden_state  # no KV cache in training or scoring
    if reads is not None:
        reads.append(Read(hidden, input_ids, attention_mask))
    return pool_last_token(hidden, attention_mask)


def is_packed(batch) -> bool:
    """A padding-free packed batch (finetune.data.collate.PackedCollator) rather than a padded one."""
    return "last_positions" in batch


def encode_packed(backbone, batch, reads: list | None = None) -> torch.Tensor:
    """Last-token hidden states of the sequences of a packed batch, shaped like `last_positions`.

    Position ids restart at every sequence and no 2-D mask is given, so transformers derives the
    block-diagonal causal mask from them (masking_utils.find_packed_sequence_indices; FlashAttention's
    variable-length path on a single row): each sequence attends to itself only, as alone. Both
    conditions matter: a KV cache (`use_cache=True`, GPT-2's default) or any 2-D attention mask (an
    all-ones one included) turns the detection off, and every token would then attend to the
    sequences before it in its row (tests/test_packing.py checks both). `reads` gets the rows with
    their `sequence_ids`, so the auxiliary LM loss never predicts across a sequence boundary.
    """
    hidden = backbone(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).last_hidden_state
    if reads is not None:
        reads.append(Read(hidden, batch["input_ids"], batch["sequence_ids"]))
    return hidden.flatten(0, 1)[batch["last_positions"]]


def encode_pooled(backbone, batch, reads: list | None = None) -> torch.Tensor:
    """Last-token hidden states of a padded batch (one sequence per example) or of a packed one."""
    if is_packed(batch):
        return encode_packed(backbone, batch, reads)
    return encode_last(backbone, batch["input_ids"], batch["attention_mask"], reads)


def skip_padding_check(backbone) -> None:
    """Turn off transformers' "We strongly recommend passing in an attention_mask" check on this backbone.

    The sequence heads call the backbone without a padding mask on right-padded batches on purpose
    (see `encode_last`: exact under causal attention), so the warning it prints at the first step
    is expected here and would only alarm users; the check also reads two token ids of every batch
    back to the host. Set per instance: a model loaded elsewhere keeps the check.
    """
    backbone.warn_if_padding_and_no_attention_mask = _no_padding_check


def _no_padding_check(input_ids, attention_mask) -> None:
    return None
