"""Training memory: an estimate before training, and the measured peak during it.

Estimate (`estimate`): weights + gradients + AdamW's two moments + the activations that autograd
keeps for the backward pass of the largest micro-batch. The activation term is measured, not
modelled: one forward pass of the model in training mode on the longest training example, with
`torch.autograd.graph.saved_tensors_hooks` adding up the storages it saves (parameters excluded),
scaled to the tokens of the largest micro-batch. That covers what a formula gets wrong easily:
GPT-2's `gelu_new` is a composite that saves 16 values per token and hidden unit of the MLP
instead of a fused GELU's 4; attention dropout makes CPU SDPA fall back to a kernel that keeps the
attention matrix; a frozen layer (LoRA) keeps no input for its weight gradient. With activation
checkpointing the forward keeps only each block's input; one block is measured again with
checkpointing off to add what its recompute holds during the backward pass. The probe runs under
`torch.random.fork_rng`, so training draws the same random numbers with or without it. Transient
buffers of the backward pass and the allocator's slack are not included.

Measurement (`PeakMemory`, over the whole of `Trainer.fit`: training steps, evaluations and
checkpoint writes): on CUDA `torch.cuda.max_memory_allocated` (weights included); on CPU the growth
of the process's resident set (RSS) over its value when training starts, sampled every 5 ms in a
thread (`resource.getrusage` only knows the lifetime peak, which data loading may already have
set). The weights exist before training starts, so on CPU the comparable estimate is the total
minus the weights (`added_by_training`).
"""

from __future__ import annotations

import threading
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from finetune.training.sampler import padded, sequence_lengths

MiB = 2**20


@dataclass(frozen=True)
class MemoryEstimate:
    weights: int  # bytes
    gradients: int
    optimizer: int
    activations: int
    tokens: int  # backbone tokens of the largest micro-batch (sequences x padded length)

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations

    @property
    def added_by_training(self) -> int:
        """What training allocates on top of the weights (the CPU measurement's counterpart)."""
        return self.total - self.weights

    def as_mb(self) -> dict:
        parts = {"weights": self.weights, "gradients": self.gradients, "optimizer": self.optimizer,
                 "activations": self.activations, "total": self.total, "added_by_training": self.added_by_training}
        return {**{k: round(v / MiB, 1) for k, v in parts.items()}, "tokens_per_micro_batch": self.tokens}

    def describe(self) -> str:
        mb = self.as_mb()
        return (f"memory estimate: weights {mb['weights']:.0f} MiB + gradients {mb['gradients']:.0f} + optimizer "
                f"{mb['optimizer']:.0f} + activations {mb['activations']:.0f} ({self.tokens} tokens in the largest "
                f"micro-batch) = {mb['total']:.0f} MiB")


def parameter_counts(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def describe_parameters(trainable: int, total: int) -> str:
    """'trainable 0.30M of 16.6M (1.8%)'."""
    def short(n):
        if n < 1e6:
            return f"{n / 1e3:.1f}K"
        return f"{n / 1e6:.2f}M" if n < 1e7 else f"{n / 1e6:.1f}M" if n < 1e9 else f"{n / 1e9:.2f}B"
    return f"trainable {short(trainable)} of {short(total)} ({100 * trainable / max(total, 1):.1f}%)"


def largest_micro_batch(trainer_cfg, dataset, max_length: int, sampler=None) -> tuple[int, int]:
    """(backbone tokens = sequences x padded length, index of the longest example) for the largest
    micro-batch the training loader can form: batch_size examples (those with the most sequences)
    at the longest length, or a token_budget batch."""
    lengths, counts = sequence_lengths(dataset)
    if len(lengths) == 0:
        return 0, -1
    multiple = max_length if trainer_cfg.pad_to_max_length else trainer_cfg.pad_to_multiple_of
    longest = int(np.argmax(lengths))
    budget = getattr(sampler, "max_tokens", None)
    if budget is not None:  # token_budget batching; an example above the budget gets a batch of its own
        return max(int(budget), int((padded(lengths, multiple) * counts).max())), longest
    sequences = int(np.sort(counts)[-trainer_cfg.batch_size:].sum())
    return sequences * int(padded(int(lengths[longest]), multiple)), longest


def _batch_tokens(batch: dict) -> int:
    return sum(batch[key].numel() for key in ("input_ids", "input_ids_swapped") if key in batch)


def saved_activation_bytes(model, batch: dict, autocast=nullcontext) -> int:
    """Bytes of the tensors autograd saves in one training-mode forward of `model` on `batch`
    (parameters and their views excluded: they are counted as weights). `autocast`: a context
    manager factory, e.g. `accelerator.autocast`."""
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    device = next(model.parameters()).device
    was_training = model.training
    model.train()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), \
                torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), autocast():
            output = model.forward(**batch)  # not through a torch.compile wrapper: eager, as autograd sees it
        del output
    finally:
        model.train(was_training)
    return sum(saved.values())


def _checkpointed_blocks(model) -> list:
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer) and m.gradient_checkpointing]


def measured_activations(model, probe: dict, tokens: int, autocast=nullcontext) -> int:
    """Activation bytes for a micro-batch of `tokens` tokens, measured on the `probe` batch."""
    probe_tokens = _batch_tokens(probe)
    if not probe_tokens or not tokens:
        return 0
    kept = saved_activation_bytes(model, probe, autocast)
    blocks = _checkpointed_blocks(model)
    if blocks:  # the block being recomputed holds its full set during the backward pass
        blocks[0].gradient_checkpointing = False
        try:
            kept += max(0, saved_activation_bytes(model, probe, autocast) - kept)
        finally:
            blocks[0].gradient_checkpointing = True
    return int(kept * tokens / probe_tokens)


def estimate(model, activations: int, tokens: int) -> MemoryEstimate:
    """Weights, gradients and AdamW states of `model`, with the measured `activations` (bytes)."""
    params = list(model.parameters())
    weights = sum(p.numel() * p.element_size() for p in params) + sum(b.numel() * b.element_size() for b in model.buffers())
    trainable = [p for p in params if p.requires_grad]
    gradients = sum(p.numel() * p.element_size() for p in trainable)
    optimizer = 2 * sum(p.numel() * 4 for p in trainable)  # AdamW: exp_avg and exp_avg_sq in fp32
    return MemoryEstimate(weights, gradients, optimizer, activations, tokens)


def estimate_training(model, accelerator, trainer_cfg, dataset, collate, max_length: int, sampler=None) -> MemoryEstimate:
    """The estimate for training `model` (unwrapped) on `dataset`, whose examples `collate` batches.

    Per process, unsharded: under FSDP or DeepSpeed the weights and states are split over the
    processes and the unwrapped model cannot run a forward by itself, so activations are not probed.
    """
    from accelerate.utils import DistributedType

    tokens, longest = largest_micro_batch(trainer_cfg, dataset, max_length, sampler)
    activations = 0
    if longest >= 0 and accelerator.distributed_type not in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        probe = {key: value.to(accelerator.device) if torch.is_tensor(value) else value
                 for key, value in collate([dataset[longest]]).items()}
        activations = measured_activations(model, probe, tokens, accelerator.autocast)
    return estimate(model, activations, tokens)


class PeakMemory:
    """Peak memory while training: CUDA's allocator peak, or the RSS growth sampled in a thread on CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.device = device
        self.base = self.peak = 0
        self._stop = threading.Event()
        self._thread = None

    @property
    def kind(self) -> str:
        return "cuda_max_allocated" if self.cuda else "cpu_rss_growth"

    def start(self) -> "PeakMemory":
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        import psutil  # a dependency of accelerate

        process = psutil.Process()
        self.base = self.peak = process.memory_info().rss

        def sample():
            while not self._stop.wait(0.005):
                self.peak = max(self.peak, process.memory_info().rss)

        self._thread = threading.Thread(target=sample, name="peak-rss", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> float:
        """MiB: peak allocated (CUDA) or peak RSS above the start (CPU)."""
        if self.cuda:
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) / MiB
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        import psutil

        self.peak = max(self.peak, psutil.Process().memory_info().rss)
        return (self.peak - self.base) / MiB
