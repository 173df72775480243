"""The CPU host-allocator setting (finetune.training.allocator): freed blocks come back without page faults.

Each check runs in a fresh interpreter: the setting is process-wide and must not leak into others.
"""

import json
import subprocess
import sys

import pytest

from finetune.training import allocator

pytestmark = pytest.mark.skipif(allocator._glibc() is None, reason="glibc's mallopt is Linux/glibc only")

BLOCKS, BLOCK_MIB = 40, 1
PAGES = BLOCKS * BLOCK_MIB * 2**20 // 4096

# A "step" holds 40 blocks of 1 MiB at once (a step's activations), touches and frees them. glibc's
# thresholds start where its defaults start (128 KiB, where a process that has not freed large
# blocks yet has them): every step's blocks are new pages. Then SETUP runs; the minor page faults
# of the third step after it are reported.
PROBE = f"""
import ctypes, json, resource, torch
from finetune.training import allocator
libc = ctypes.CDLL("libc.so.6")
assert libc.mallopt(allocator.M_MMAP_THRESHOLD, 128 * 1024) and libc.mallopt(allocator.M_TRIM_THRESHOLD, 128 * 1024)
def step():
    blocks = [torch.empty({BLOCK_MIB} * 2**18) for _ in range({BLOCKS})]
    for block in blocks:
        block.fill_(1.0)
    del blocks
SETUP
step(); step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
step()
print(json.dumps({{"faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before, "in_use": allocator.host_allocator()}}))
"""


def probe(setup: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE.replace("SETUP", setup)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_steps_freed_blocks_are_reused_without_page_faults():
    assert probe("pass")["faults"] > PAGES // 2  # the probe sees the faults it is about
    reused = probe("allocator.configure_host_allocator(True, 'cpu')")
    assert reused["faults"] < PAGES // 10 and reused["in_use"] == "reuse"


@pytest.mark.parametrize("enabled, device", [(False, "cpu"), (True, "cuda")])
def test_gpu_runs_and_the_switch_keep_glibcs_defaults(enabled, device):
    result = probe(f"allocator.configure_host_allocator({enabled}, {device!r})")
    assert result["in_use"] == "system" and result["faults"] > PAGES // 2
