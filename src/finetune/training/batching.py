"""Data loaders for training and evaluation: batching mode, padding and evaluation order.

`trainer.batching`:
- `bucketed` (the default): batches of `batch_size` examples of similar length (`trainer.bucket_batches`
  batches per bucket), so batches carry little padding; the batch order is shuffled.
- `random`: shuffled examples, `batch_size` per batch, padded to the longest of the batch.
- `token_budget`: batches of up to `trainer.max_tokens` padded tokens, sorted by length and packed,
  so short examples come in large batches and long ones in small batches.
- `packed`: the batches of `random` (shuffled, `batch_size` examples), without padding: every
  sequence laid end to end in rows of up to `trainer.pack_length` tokens, position ids restarting
  at each, attention blocked between them (finetune.data.collate.PackedCollator). For the
  sequence heads (classification, entailment, similarity, multiple choice); span QA windows are
  read `bucketed`.

Language-model blocks all have task.max_length tokens, so every mode reads them in `random` order.

Every order is a pure function of (seed, epoch), so a resumed run replays it and skips what it had
done. Evaluation splits are read longest first (fewer pad tokens), never packed, in every mode:
metrics do not depend on the training batching.

`trainer.pad_to_multiple_of`: null pads to a multiple of 8 on CUDA (tensor cores) and not at all
elsewhere (on a CPU it only adds work); any integer overrides that, 1 turns it off.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch.utils.data import DataLoader

from finetune.config import BATCHING_MODES, FLASH_ATTENTION
from finetune.data.collate import PackedCollator
from finetune.data.input_formats import FORMATS
from finetune.training.sampler import (
    BucketBatchSampler,
    EpochShuffleSampler,
    TokenBudgetBatchSampler,
    length_sorted,
    padded,
    sequence_lengths,
)

log = logging.getLogger(__name__)

CUDA_PAD_MULTIPLE = 8


def padding_multiple(trainer_cfg, max_length: int, on_cuda: bool = False) -> int | None:
    """What batches are padded to a multiple of: `pad_to_multiple_of`, or by device when null.

    `pad_to_max_length` pads every batch to task.max_length (the run_glue way, for comparison): no
    sequence is longer, so padding to a multiple of it is exactly that."""
    if trainer_cfg.pad_to_max_length:
        return max_length
    multiple = trainer_cfg.pad_to_multiple_of
    if multiple is None:
        multiple = CUDA_PAD_MULTIPLE if on_cuda else None
    return multiple if multiple and multiple > 1 else None


def pack_row_tokens(trainer_cfg, max_length: int, attn_implementation: str) -> int | None:
    """Tokens per packed row: `trainer.pack_length`, else task.max_length (every sequence fits one row).

    FlashAttention finds the sequences from the position ids of a single row only (with several rows
    it would attend across them), so with it the whole batch is one row (None) whatever pack_length says."""
    if attn_implementation in FLASH_ATTENTION:
        return None
    return trainer_cfg.pack_length or max_length


def default_max_tokens(lengths: np.ndarray, counts: np.ndarray, batch_size: int, multiple: int | None) -> int:
    """`batch_size` examples of mean padded length: about as many tokens (and steps) as `bucketed`."""
    cost = padded(lengths, multiple) * counts
    return max(int(np.ceil(batch_size * float(cost.mean()))), int(cost.max()))


def build_train_loader(trainer_cfg, dataset, tokenizer, input_format: str, max_length: int, seed: int, pin_memory: bool = False,
                       on_cuda: bool = False, attn_implementation: str = "sdpa"):
    """(DataLoader, sampler): the sampler is the object whose `set_epoch` picks the epoch's order.

    `random` and `packed` batch an `EpochShuffleSampler`'s order of examples (the DataLoader cuts it
    into batches); the other modes' samplers yield whole batches."""
    multiple = padding_multiple(trainer_cfg, max_length, on_cuda)
    entry = FORMATS[input_format]
    mode = entry.training_batching(trainer_cfg.batching)
    if mode != trainer_cfg.batching:
        log.info("trainer.batching=%s: %s features are read in %s batches (see finetune.training.batching)",
                 trainer_cfg.batching, input_format, mode)
    if mode == "packed":
        collator = PackedCollator(entry, tokenizer, pack_row_tokens(trainer_cfg, max_length, attn_implementation), multiple)
    else:
        collator = entry.collator(tokenizer, multiple)
    common = dict(
        collate_fn=collator, num_workers=trainer_cfg.num_workers, pin_memory=pin_memory,
        # Starting an iteration draws a worker seed from the loader's generator; with the default
        # (global) one, a resumed run that restarts mid-epoch would shift the dropout RNG.
        generator=torch.Generator().manual_seed(seed),
    )
    if mode in ("random", "packed"):
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


def build_eval_loader(trainer_cfg, dataset, tokenizer, input_format: str, max_length: int, seed: int, pin_memory: bool = False,
                      on_cuda: bool = False):
    """Evaluation in large padded batches, longest examples first when `trainer.eval_sort_by_length`,
    whatever `trainer.batching` trains with.

    Sorting is safe for metrics: labels (or span `feature_index`) travel in the batch with the
    inputs, and `gather_for_metrics` still drops the duplicates that sharding adds at the end.
    """
    multiple = padding_multiple(trainer_cfg, max_length, on_cuda)
    batch_size = trainer_cfg.eval_batch_size or 4 * trainer_cfg.batch_size
    order = length_sorted(sequence_lengths(dataset)[0]) if trainer_cfg.eval_sort_by_length else None
    return DataLoader(
        dataset, batch_size=batch_size, sampler=order, shuffle=False, collate_fn=FORMATS[input_format].collator(tokenizer, multiple),
        num_workers=trainer_cfg.num_workers, pin_memory=pin_memory, generator=torch.Generator().manual_seed(seed),
    )


def eval_loaders(trainer_cfg, datasets: dict, tokenizer, input_format: str, max_length: int, seed: int, accelerator) -> dict:
    """The evaluation loader of every split, sharded over processes: what training evaluates with
    and what mode=evaluate and mode=predict read (same batch size and order)."""
    on_cuda = accelerator.device.type == "cuda"
    return {
        split: accelerator.prepare(build_eval_loader(trainer_cfg, features, tokenizer, input_format, max_length, seed,
                                                     pin_memory=on_cuda, on_cuda=on_cuda))
        for split, features in datasets.items()
    }


def compile_model(model, trainer_cfg):
    """torch.compile in place (parameter names and checkpoints unchanged).

    Shapes: `pad_to_multiple_of` leaves a handful of padded lengths, so random and bucketed
    batching compile statically (one graph per shape); token budgets and packed rows vary the batch
    dimension too, so those modes let dynamo mark shapes dynamic.
    """
    import torch._dynamo

    limit = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"
    setattr(torch._dynamo.config, limit, max(getattr(torch._dynamo.config, limit), 64))
    dynamic = None if trainer_cfg.batching in ("token_budget", "packed") else False
    model.compile(dynamic=dynamic)
    return model


def enable_tf32() -> None:
    """TF32 tensor cores for fp32 matmuls/convolutions on CUDA (the bf16 autocast regions are unaffected)."""
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.set_float32_matmul_precision("high")
