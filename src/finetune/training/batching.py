"""Data loaders for training and evaluation: batching mode, padding and evaluation order.

`trainer.batching`:
- `random`: shuffled examples, `batch_size` per batch, padded to the longest of the batch.
- `bucketed`: batches of `batch_size` examples of similar length (`trainer.bucket_batches` batches
  per bucket), so batches carry little padding; the batch order is shuffled.
- `token_budget`: batches of up to `trainer.max_tokens` padded tokens, sorted by length and packed,
  so short examples come in large batches and long ones in small batches.

Every order is a pure function of (seed, epoch), so a resumed run replays it and skips what it had
done. Evaluation splits are read longest first (fewer pad tokens); metrics do not depend on order.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch.utils.data import DataLoader

from finetune.data.collate import make_collator
from finetune.training.sampler import (
    BucketBatchSampler,
    EpochShuffleSampler,
    TokenBudgetBatchSampler,
    length_sorted,
    padded,
    sequence_lengths,
)

log = logging.getLogger(__name__)

BATCHING_MODES = ("random", "bucketed", "token_budget")


def padding_multiple(trainer_cfg, max_length: int) -> int | None:
    """`pad_to_max_length` pads every batch to task.max_length (the run_glue way, for comparison):
    no sequence is longer, so padding to a multiple of it is exactly that."""
    return max_length if trainer_cfg.pad_to_max_length else trainer_cfg.pad_to_multiple_of


def default_max_tokens(lengths: np.ndarray, counts: np.ndarray, batch_size: int, multiple: int | None) -> int:
    """`batch_size` examples of mean padded length: about as many tokens (and steps) as `bucketed`."""
    cost = padded(lengths, multiple) * counts
    return max(int(np.ceil(batch_size * float(cost.mean()))), int(cost.max()))


def build_train_loader(trainer_cfg, dataset, tokenizer, input_format: str, max_length: int, seed: int, pin_memory: bool = False):
    """(DataLoader, sampler): the sampler is the object whose `set_epoch` picks the epoch's order."""
    multiple = padding_multiple(trainer_cfg, max_length)
    collator = make_collator(input_format, tokenizer, multiple)
    common = dict(
        collate_fn=collator, num_workers=trainer_cfg.num_workers, pin_memory=pin_memory,
        # Starting an iteration draws a worker seed from the loader's generator; with the default
        # (global) one, a resumed run that restarts mid-epoch would shift the dropout RNG.
        generator=torch.Generator().manual_seed(seed),
    )
    mode = trainer_cfg.batching
    if mode == "random":
        sampler = EpochShuffleSampler(len(dataset), seed)
        return DataLoader(dataset, batch_size=trainer_cfg.batch_size, sampler=sampler, drop_last=False, **common), sampler
    lengths, counts = sequence_lengths(dataset)
    if mode == "bucketed":
        sampler = BucketBatchSampler(lengths, trainer_cfg.batch_size, seed, trainer_cfg.bucket_batches)
    elif mode == "token_budget":
        max_tokens = trainer_cfg.max_tokens or default_max_tokens(lengths, counts, trainer_cfg.batch_size, multiple)
        sampler = TokenBudgetBatchSampler(lengths, max_tokens, seed, multiple, counts)
        log.info(
            "token_budget batching: max_tokens=%d, %d batches per epoch (mean %.1f examples per batch)",
            max_tokens, len(sampler), len(dataset) / max(1, len(sampler)),
        )
    else:
        raise ValueError(f"trainer.batching '{mode}': expected one of {', '.join(BATCHING_MODES)}")
    return DataLoader(dataset, batch_sampler=sampler, **common), sampler


def build_eval_loader(trainer_cfg, dataset, tokenizer, input_format: str, max_length: int, seed: int, pin_memory: bool = False):
    """Evaluation in large batches, longest examples first when `trainer.eval_sort_by_length`.

    Sorting is safe for metrics: labels (or span `feature_index`) travel in the batch with the
    inputs, and `gather_for_metrics` still drops the duplicates that sharding adds at the end.
    """
    multiple = padding_multiple(trainer_cfg, max_length)
    batch_size = trainer_cfg.eval_batch_size or 4 * trainer_cfg.batch_size
    order = length_sorted(sequence_lengths(dataset)[0]) if trainer_cfg.eval_sort_by_length else None
    return DataLoader(
        dataset, batch_size=batch_size, sampler=order, shuffle=False, collate_fn=make_collator(input_format, tokenizer, multiple),
        num_workers=trainer_cfg.num_workers, pin_memory=pin_memory, generator=torch.Generator().manual_seed(seed),
    )


def compile_model(model, trainer_cfg):
    """torch.compile in place (parameter names and checkpoints unchanged).

    Shapes: `pad_to_multiple_of` leaves a handful of padded lengths, so random and bucketed
    batching compile statically (one graph per shape); token budgets vary the batch dimension
    too, so that mode lets dynamo mark shapes dynamic.
    """
    import torch._dynamo

    limit = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"
    setattr(torch._dynamo.config, limit, max(getattr(torch._dynamo.config, limit), 64))
    dynamic = None if trainer_cfg.batching == "token_budget" else False
    model.compile(dynamic=dynamic)
    return model


def enable_tf32() -> None:
    """TF32 tensor cores for fp32 matmuls/convolutions on CUDA (the bf16 autocast regions are unaffected)."""
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.set_float32_matmul_precision("high")
