"""The tokenizing `datasets.map` calls are cached under a key that changes exactly when their output would."""

from __future__ import annotations

import pytest
from datasets import Dataset
from transformers import AutoTokenizer

from conftest import ROOT
from finetune.data.cache import tokenize_map, tokenizer_key
from finetune.data.input_formats import FORMATS
from finetune.data.formats import configure_tokenizer


def _tokenizer(gpt1_tokens: bool = False):
    tokenizer = AutoTokenizer.from_pretrained(ROOT / "data" / "tiny-tokenizer")
    configure_tokenizer(tokenizer, gpt1_tokens=gpt1_tokens)
    return tokenizer


def _featurize(rows, tokenizer, max_length=32):
    kwargs = {"max_length": max_length, "args": {}, "training": True}
    return tokenize_map(rows, FORMATS["text"].features, tokenizer, kwargs, batched=True, remove_columns=["text"])


@pytest.fixture
def rows(tmp_path):
    """Rows backed by an arrow file, as loaded task files are (an in-memory dataset is never cached)."""
    path = tmp_path / "rows.arrow"
    Dataset.from_dict({"text": [f"sentence number {i} is here" for i in range(20)], "label": [i % 2 for i in range(20)]}).save_to_disk(path)
    return Dataset.load_from_disk(path)


def test_a_second_identical_map_is_read_from_the_cache(rows):
    first = _featurize(rows, _tokenizer())
    second = _featurize(rows, _tokenizer())  # another tokenizer object, same contents
    assert second._fingerprint == first._fingerprint
    assert second.cache_files[0]["filename"] == first.cache_files[0]["filename"]
    assert second["input_ids"] == first["input_ids"]


def test_the_key_changes_with_the_tokenizer_and_the_arguments(rows):
    base = _featurize(rows, _tokenizer())._fingerprint
    assert _featurize(rows, _tokenizer(gpt1_tokens=True))._fingerprint != base  # added start/delimiter/extract tokens
    assert _featurize(rows, _tokenizer(), max_length=8)._fingerprint != base
    padded_left = _tokenizer()
    padded_left.padding_side = "left"
    assert tokenizer_key(padded_left) != tokenizer_key(_tokenizer())


def test_calling_the_tokenizer_with_truncation_does_not_change_its_key():
    tokenizer = _tokenizer()
    before = tokenizer_key(tokenizer)
    tokenizer(["a b c d e f g"], truncation=True, max_length=3, padding="max_length")
    assert tokenizer_key(tokenizer) == before
