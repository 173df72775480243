"""How a run ran: library versions, devices, processes, precision, the code's commit, the overrides.

The git commit is read from the checkout's .git directory (HEAD, refs, packed-refs), so recording
it needs neither git nor a child process.
"""

from __future__ import annotations

import platform
import sys
from importlib import metadata
from pathlib import Path

import torch

from finetune.training.allocator import host_allocator

PACKAGES = ("torch", "transformers", "accelerate", "datasets", "evaluate", "hydra-core", "tokenizers", "peft")


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _git_dir(root: Path) -> Path | None:
    dot_git = root / ".git"
    if dot_git.is_file():  # a worktree or submodule: "gitdir: <path>"
        text = dot_git.read_text().strip()
        if text.startswith("gitdir:"):
            target = Path(text.split(":", 1)[1].strip())
            return target if target.is_absolute() else (root / target).resolve()
        return None
    return dot_git if dot_git.is_dir() else None


def git_commit(root: Path) -> str | None:
    """The commit checked out at `root`, or None outside a git checkout."""
    git = _git_dir(root)
    if git is None or not (git / "HEAD").is_file():
        return None
    common = git
    if (git / "commondir").is_file():  # worktrees keep refs in the main repository
        common = (git / (git / "commondir").read_text().strip()).resolve()
    head = (git / "HEAD").read_text().strip()
    if not head.startswith("ref:"):
        return head or None
    ref = head.split(":", 1)[1].strip()
    for base in (git, common):
        if (base / ref).is_file():
            return (base / ref).read_text().strip()
    packed = common / "packed-refs"
    if packed.is_file():
        for line in packed.read_text().splitlines():
            if line.endswith(" " + ref):
                return line.split(" ", 1)[0]
    return None


def _overrides() -> list[str]:
    try:
        from hydra.core.hydra_config import HydraConfig

        return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    except Exception:  # no Hydra runtime (called from Python)
        return []


def describe(accelerator, root: Path) -> dict:
    """The `environment` section of metrics.json."""
    cuda = accelerator.device.type == "cuda"
    return {
        "python": platform.python_version(),
        "packages": {name: version for name in PACKAGES if (version := _version(name)) is not None},
        "device": accelerator.device.type,
        "device_name": torch.cuda.get_device_name(accelerator.device) if cuda else (platform.processor() or platform.machine()),
        "device_count": torch.cuda.device_count() if cuda else 1,
        "cpu_threads": torch.get_num_threads(),
        "num_processes": accelerator.num_processes,
        "distributed_type": str(accelerator.distributed_type.value if hasattr(accelerator.distributed_type, "value") else accelerator.distributed_type),
        "mixed_precision": str(accelerator.mixed_precision),
        "host_allocator": host_allocator(),
        "git_commit": git_commit(root),
        "overrides": _overrides(),
        "command": [Path(sys.argv[0]).name, *sys.argv[1:]] if sys.argv else [],
    }
