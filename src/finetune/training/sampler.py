"""Training orders that are pure functions of (seed, epoch).

Resuming mid-epoch then replays exactly the same order and skips the batches already seen.

- `EpochShuffleSampler`: a plain shuffle (`trainer.batching=random`), batched by the DataLoader.
- `BucketBatchSampler`: length-bucketed batches of `batch_size` examples (`trainer.batching=bucketed`).
- `TokenBudgetBatchSampler`: batches of up to `max_tokens` padded tokens (`trainer.batching=token_budget`).

The two batch samplers have a fixed number of batches per epoch and no `batch_size`
attribute: Accelerate's `BatchSamplerShard` then deals whole batches round-robin to the
processes and, when the count is not a multiple of the number of processes, repeats batches from
the start of the epoch so that every process runs the same number of steps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Sampler


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


class EpochShuffleSampler(Sampler[int]):
    def __init__(self, size: int, seed: int):
        self.size = size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self):
        return iter(torch.randperm(self.size, generator=epoch_generator(self.seed, self.epoch)).tolist())


def _lengths_of(column) -> tuple[np.ndarray, np.ndarray]:
    """(longest sequence, number of sequences) per row of an `input_ids`-like column."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(column, (pa.Array, pa.ChunkedArray)):
        value_type = column.type.value_type
        if not (pa.types.is_list(value_type) or pa.types.is_large_list(value_type)):
            lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False).astype(np.int64)
            return lengths, np.ones_like(lengths)
        column = column.to_pylist()
    rows = [
        (max((len(x) for x in ids), default=0), len(ids)) if len(ids) and isinstance(ids[0], (list, tuple)) else (len(ids), 1)
        for ids in column
    ]
    return np.array([r[0] for r in rows], dtype=np.int64).reshape(-1), np.array([r[1] for r in rows], dtype=np.int64).reshape(-1)


def sequence_lengths(dataset) -> tuple[np.ndarray, np.ndarray]:
    """Per example: the token count the collator pads to, and how many sequences it pads.

    One sequence per example for text and span features; both orders of a similarity pair count
    as two sequences of their common length; multiple choice as one sequence per choice.
    Works on a `datasets.Dataset` (read as Arrow, no Python lists) or anything indexable by column.
    """
    columns = dataset.column_names
    source = dataset.with_format("arrow") if hasattr(dataset, "with_format") else dataset
    lengths, counts = _lengths_of(source["input_ids"])
    if "input_ids_swapped" in columns:  # the collator pads both orders to one common length
        swapped, _ = _lengths_of(source["input_ids_swapped"])
        lengths, counts = np.maximum(lengths, swapped), counts * 2
    return lengths, counts


def padded(length: int | np.ndarray, multiple: int | None):
    if not multiple:
        return length
    return -(-length // multiple) * multiple


class _EpochBatchSampler(Sampler[list[int]]):
    def __init__(self, seed: int):
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self, generator: torch.Generator) -> list[list[int]]:
        raise NotImplementedError

    def __iter__(self):
        generator = epoch_generator(self.seed, self.epoch)
        batches = self._batches(generator)
        order = torch.randperm(len(batches), generator=generator).tolist()
        return iter([batches[i] for i in order])


class BucketBatchSampler(_EpochBatchSampler):
    """Shuffle, cut into buckets of `bucket_batches * batch_size` examples, sort each bucket by length
    (longest first) and cut it into batches of `batch_size`; then shuffle the batches.

    Batches hold examples of similar length, so little padding, while the bucket keeps the
    batches random. `ceil(n / batch_size)` batches per epoch, all full but at most one.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, bucket_batches: int = 50):
        super().__init__(seed)
        self.lengths = np.asarray(lengths, dtype=np.int64)
        # Deliberately not called `batch_size`: the one short batch may land anywhere in the epoch,
        # and Accelerate's shard expects only full batches from a sampler with a batch_size.
        self.examples_per_batch = int(batch_size)
        self.bucket = self.examples_per_batch * max(1, int(bucket_batches))

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.examples_per_batch)

    def _batches(self, generator):
        size = self.examples_per_batch
        perm = torch.randperm(len(self.lengths), generator=generator).numpy()
        batches = []
        for start in range(0, len(perm), self.bucket):
            bucket = perm[start : start + self.bucket]
            bucket = bucket[np.argsort(-self.lengths[bucket], kind="stable")]
            batches.extend(bucket[i : i + size].tolist() for i in range(0, len(bucket), size))
        return batches


class TokenBudgetBatchSampler(_EpochBatchSampler):
    """Batches of as many examples as fit in `max_tokens` padded tokens (sequences x padded length).

    Examples are sorted by length (ties broken at random, per epoch) and packed greedily, then the
    batches are shuffled. The packing depends on the sorted lengths only, so every epoch has the
    same number of batches. An example longer than the budget on its own gets a batch of one.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        max_tokens: int,
        seed: int,
        pad_to_multiple_of: int | None = None,
        sequences: Sequence[int] | None = None,
        max_batch_size: int | None = None,
    ):
        super().__init__(seed)
        self.lengths = padded(np.asarray(lengths, dtype=np.int64), pad_to_multiple_of)
        self.sequences = np.ones_like(self.lengths) if sequences is None else np.asarray(sequences, dtype=np.int64)
        self.max_tokens = int(max_tokens)
        self.max_batch_size = max_batch_size
        self.sizes = self._pack(np.lexsort((self.sequences, self.lengths)))

    def _pack(self, order: np.ndarray) -> list[int]:
        """Sizes of consecutive batches of the length-sorted `order`."""
        sizes, count, rows = [], 0, 0
        for i in order:
            length, seqs = int(self.lengths[i]), int(self.sequences[i])
            # sorted ascending: the new example is the longest of the batch so far
            fits = (rows + seqs) * length <= self.max_tokens and (self.max_batch_size is None or count < self.max_batch_size)
            if count and not fits:
                sizes.append(count)
                count, rows = 0, 0
            count, rows = count + 1, rows + seqs
        if count:
            sizes.append(count)
        return sizes

    def __len__(self) -> int:
        return len(self.sizes)

    def _batches(self, generator):
        ties = torch.randperm(len(self.lengths), generator=generator).numpy()
        order = np.lexsort((ties, self.sequences, self.lengths))
        bounds = np.cumsum([0, *self.sizes])
        return [order[a:b].tolist() for a, b in zip(bounds[:-1], bounds[1:])]

    def padded_tokens(self, batch: Sequence[int]) -> int:
        return int(self.sequences[list(batch)].sum() * self.lengths[list(batch)].max())


def length_sorted(lengths: Sequence[int]) -> list[int]:
    """Indices longest first, for evaluation (fewer pad tokens; metrics do not depend on order)."""
    return np.argsort(-np.asarray(lengths), kind="stable").tolist()
