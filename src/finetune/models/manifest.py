"""finetune.json: what a directory needs besides weights to rebuild its task model and input format.

Every exported `model/`, `adapter/` and `checkpoints/step-N` holds one. It is parsed here only
(`read_manifest`), into a `Manifest`: a dataclass that also reads as the JSON record it is
(`manifest["labels"]`, `manifest.get("peft")`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from finetune.data.formats import GPT1_TOKENS
from finetune.errors import ModelError

MANIFEST = "finetune.json"


@dataclass(frozen=True)
class Manifest(Mapping):
    task: str
    head: str
    head_args: dict = field(default_factory=dict)
    num_labels: int = 1
    labels: list | None = None
    max_length: int = 1024
    gpt1_tokens: bool | None = None  # None: older exports, read from the tokenizer
    input_roles: list | None = None  # None: older exports, the head's roles
    peft: dict | None = None  # LoRA settings (a checkpoint's model is rebuilt with them); adapter/: with its sha256
    merged_adapters: list = field(default_factory=list)  # adapters merged into these weights (never applied twice)

    def __getitem__(self, key):
        if key not in self._fields():
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self):
        return iter(self._fields())

    def __len__(self) -> int:
        return len(self._fields())

    @classmethod
    def _fields(cls) -> tuple:
        return tuple(f.name for f in dataclasses.fields(cls))

    def replace(self, **changes) -> "Manifest":
        return dataclasses.replace(self, **changes)

    def as_json(self) -> dict:
        record = {name: getattr(self, name) for name in self._fields()}
        if not record["merged_adapters"]:
            del record["merged_adapters"]
        return record

    def write(self, directory: Path) -> Path:
        path = Path(directory) / MANIFEST
        path.write_text(json.dumps(self.as_json(), indent=2) + "\n")
        return path

    @classmethod
    def from_json(cls, record: dict) -> "Manifest":
        known = {name: record[name] for name in cls._fields() if name in record}
        known["head_args"] = known.get("head_args") or {}
        known["merged_adapters"] = list(known.get("merged_adapters") or [])
        return cls(**known)


def read_manifest(directory: str | Path, what: str | None = None) -> Manifest | None:
    """The manifest of a directory, None when it has none. An unreadable one is a ModelError naming
    `what` (e.g. "model.name_or_path '<dir>'"), or None when `what` is None (a best-effort look)."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        return None
    try:
        return Manifest.from_json(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError, AttributeError) as err:
        if what is None:
            return None
        raise ModelError(f"{what}: {MANIFEST} is not readable JSON of a finetune model ({err})") from err


def uses_gpt1_tokens(tokenizer) -> bool:
    return GPT1_TOKENS["start"] in tokenizer.get_vocab()
