"""Host memory on CPU: let glibc's malloc keep the blocks one training step frees for the next.

glibc serves a block above its mmap threshold with a fresh `mmap` and unmaps it on `free`, and
returns free memory at the top of its heap to the kernel once there is more than its trim
threshold. Both thresholds adapt to what the process allocated and freed before (the mmap one rises
to the size of a freed mapped block, the trim one to twice that), so where they stand when training
starts depends on everything before it. In our runs they stood low: every step's activations and
gradients were new pages that the kernel faulted in and zeroed, ~22,000 minor page faults a step
and 15-20% of the step time (SST-2, mini backbone, 2 cores; docs/benchmarks.md).

Fixed thresholds instead: blocks up to `MMAP_THRESHOLD` (32 MiB, the largest glibc takes) come from
the heap, and the heap is trimmed only when more than `TRIM_THRESHOLD` (1 GiB) is free at its top,
so the blocks one step frees are the next step's. Larger blocks (an LM head's logits, the token
embeddings' gradient) keep their own mappings, where transparent huge pages make faulting them in
cheap, and the heap does not fragment around them: with mmap turned off altogether the LM
benchmark's peak RSS grew by a quarter. The peak is otherwise unchanged; the process holds on to
memory it freed instead of returning it at once.

The setting is process-wide and changes where memory comes from, never a result. glibc (Linux)
only: elsewhere nothing changes. `trainer.reuse_host_memory=false` keeps glibc's defaults.
"""

from __future__ import annotations

import ctypes
import logging
import sys

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # <malloc.h>
MMAP_THRESHOLD = 32 << 20  # glibc's upper limit for it on 64-bit
TRIM_THRESHOLD = 1 << 30

_in_use = "system"  # what this process's malloc does: system (glibc's defaults) | reuse


def _glibc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt  # noqa: B018 (musl and others have no mallopt)
    except (OSError, AttributeError):
        return None
    return libc


def reuse_freed_host_memory() -> bool:
    """Fix malloc's mmap and trim thresholds (see the module docstring); whether glibc took both."""
    libc = _glibc()
    if libc is None:
        return False
    applied = bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    log.debug("glibc malloc: mmap threshold %d, trim threshold %d bytes: %s", MMAP_THRESHOLD, TRIM_THRESHOLD,
              "applied" if applied else "refused")
    return applied


def configure_host_allocator(enabled: bool, device_type: str) -> None:
    """`reuse_freed_host_memory` for a CPU run with `trainer.reuse_host_memory`. GPU runs keep glibc's
    defaults: their tensors live in CUDA's caching allocator. Once on, it stays on for the process."""
    global _in_use
    if enabled and device_type == "cpu" and _in_use != "reuse" and reuse_freed_host_memory():
        _in_use = "reuse"


def host_allocator() -> str:
    """'reuse' once `configure_host_allocator` turned it on in this process, else 'system' (metrics.json)."""
    return _in_use
