"""Cache keys for the `datasets.map` calls that tokenize.

`datasets` keys a map call by pickling its function and arguments with dill. For a transformers
tokenizer that means its whole vocabulary and merges, object by object: ~0.26 s per call on a
2-core CPU, on every run, even when the result comes from the cache. The key here holds the same
information in ~0.015 s: the tokenizer's serialized backend (vocabulary, merges, added tokens
such as the input-format tokens, normalizer, pre-tokenizer, post-processor), the settings outside it
that change what it returns, and the source of the modules that turn rows into token ids, so that an
edit to them is a cache miss, not a stale hit.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

from datasets import Dataset
from datasets.fingerprint import Hasher

# The modules whose code decides the token ids of a row (see finetune.data.input_formats).
TOKENIZING_MODULES = ("input_formats.py", "features.py", "formats.py", "span.py", "blocks.py")


@lru_cache(maxsize=1)
def _source_digest() -> str:
    here = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for name in TOKENIZING_MODULES:
        digest.update((here / name).read_bytes())
    return digest.hexdigest()


def tokenizer_key(tokenizer) -> str:
    """A digest of everything about `tokenizer` that changes its output (datasets' own hash without a fast backend)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return Hasher.hash(tokenizer)
    # Calling a tokenizer with truncation or padding switches them on in its backend: not part of the key.
    truncation, padding = backend.truncation, backend.padding
    backend.no_truncation()
    backend.no_padding()
    try:
        serialized = backend.to_str()
    finally:
        if truncation:
            backend.enable_truncation(**truncation)
        if padding:
            backend.enable_padding(**padding)
    settings = [type(tokenizer).__qualname__, tokenizer.padding_side, tokenizer.truncation_side,
                tokenizer.model_max_length, sorted(map(str, tokenizer.special_tokens_map.items()))]
    return hashlib.sha256((serialized + repr(settings)).encode()).hexdigest()


def tokenize_map(rows: Dataset, function, tokenizer, fn_kwargs: dict, **map_kwargs) -> Dataset:
    """`rows.map(function, fn_kwargs={tokenizer, **fn_kwargs}, **map_kwargs)`, with a cheap cache key."""
    parts = [rows._fingerprint, function.__module__, function.__qualname__, _source_digest(), tokenizer_key(tokenizer),
             fn_kwargs, {k: v for k, v in map_kwargs.items() if k != "desc"}]
    return rows.map(function, fn_kwargs={**fn_kwargs, "tokenizer": tokenizer}, new_fingerprint=Hasher.hash(parts), **map_kwargs)
