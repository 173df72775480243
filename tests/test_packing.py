"""Padding-free packed batches (trainer.batching=packed): exact, and exact for the auxiliary LM loss.

- The collator lays every sequence whole into rows of at most pack_length tokens, position ids
  restart at 0 for each, `sequence_ids` tell sequences apart, `last_positions` points at each last token.
- Exactness, for every sequence head (classification, entailment, similarity in both orders,
  multiple choice with placeholder candidates): per-example logits of a packed batch equal those of
  the padded batch. The check has teeth: with GPT-2's default KV cache, or with an all-ones attention
  mask, transformers does not block attention between packed sequences and the logits differ.
- Training: loss, auxiliary LM loss (no target across a sequence boundary, only real tokens) and
  gradients of a packed batch equal the padded batch's.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import GPT2Config, GPT2Model

from finetune.data.collate import PackedCollator, pack_rows
from finetune.data.input_formats import FORMATS, make_collator
from finetune.models.heads import lm_target_positions
from finetune.models.task_model import TaskModel, build_head
from test_aux_lm import check as check_aux_lm
from test_aux_lm import model_for

TEXTS = ["a man plays a guitar loudly on the stage tonight", "ok", "the film is good", "not good at all , really",
         "fine", "a long and winding review of a film that never seems to end at all , sadly", "meh", "great acting"]
PAIRS = ["someone plays music", "a dog runs in the park all day", "it is fine", "bad", "the end", "short", "yes", "no way"]


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=499, n_layer=2, n_embd=32, n_head=2, n_positions=256)
    config._attn_implementation = "sdpa"
    return GPT2Model(config).eval()


def features_for(input_format: str, tokenizer, training: bool = True) -> list[dict]:
    if input_format == "choices":
        contexts = ["the cat sat on the mat", "rain fell", "she opened the door and looked outside for a while", "he ran"]
        choices = [["it slept", "it ran away quickly", "no"], ["wet"], ["sun", "snow fell on the quiet street"], ["fast", "slow"]]
        columns = FORMATS["choices"].features({"context": contexts, "choices": choices}, tokenizer, 64, {}, training)
    elif input_format == "text_both_orders":
        columns = FORMATS["text_both_orders"].features({"text": TEXTS, "text_pair": PAIRS}, tokenizer, 64, {}, training)
    else:
        columns = FORMATS["text"].features({"text": TEXTS, "text_pair": PAIRS if input_format == "pair" else None}, tokenizer, 64, {}, training)
    count = len(columns["input_ids"])
    return [{k: v[i] for k, v in columns.items() if k != "truncated"} | {"labels": i % 2, "index": i} for i in range(count)]


HEAD_CASES = {  # head -> (input format of its features, collator format)
    "classification": ("text", "text"),
    "entailment": ("pair", "text"),
    "similarity": ("text_both_orders", "text_both_orders"),
    "multiple_choice": ("choices", "choices"),
}


def sequences_of(input_format: str, features: list[dict]) -> list[list[int]]:
    if input_format == "text_both_orders":
        return [f["input_ids"] for f in features] + [f["input_ids_swapped"] for f in features]
    if input_format == "choices":
        return [ids for f in features for ids in f["input_ids"]]
    return [f["input_ids"] for f in features]


# --------------------------------------------------------------------------- collator


def test_pack_rows_fills_rows_first_fit_and_gives_long_sequences_a_row_of_their_own():
    lengths = np.array([5, 9, 3, 30, 7, 1, 4])
    rows, offsets = pack_rows(lengths, row_tokens=12)
    for row in set(rows.tolist()):
        members = np.flatnonzero(rows == row)
        spans = sorted((offsets[i], offsets[i] + lengths[i]) for i in members)
        assert spans[0][0] == 0 and all(a[1] == b[0] for a, b in zip(spans, spans[1:]))  # end to end, no gaps
        assert spans[-1][1] <= 12 or len(members) == 1  # 30 tokens: alone
    # first fit decreasing: 30 alone, then 9, 7, 5 -> the 7's row, 4 -> a new row, 3 -> the 9's row, 1 -> the 4's row
    assert sorted(sorted(lengths[rows == r].tolist()) for r in range(rows.max() + 1)) == [[1, 4], [3, 9], [5, 7], [30]]


@pytest.mark.parametrize("input_format", ["text", "text_both_orders", "choices"])
def test_packed_batch_holds_every_sequence_whole_with_restarting_positions(input_format, tiny_tokenizer):
    features = features_for(input_format, tiny_tokenizer)
    batch = PackedCollator(FORMATS[input_format], tiny_tokenizer, row_tokens=24, pad_to_multiple_of=8)(features)
    rows, width = batch["input_ids"].shape
    assert width % 8 == 0 and "attention_mask" not in batch
    sequences = sequences_of(input_format, features)
    if input_format == "choices":  # placeholders fill the example with one candidate up to three
        sequences = [s for f in features for s in f["input_ids"] + [[tiny_tokenizer.pad_token_id]] * (3 - len(f["input_ids"]))]
        assert batch["last_positions"].shape == (len(features), 3)
        assert batch["choice_mask"].tolist() == [[1, 1, 1], [1, 0, 0], [1, 1, 0], [1, 1, 0]]
    elif input_format == "text_both_orders":
        assert batch["last_positions"].shape == (len(features), 2)
    flat_ids, flat_pos, flat_seq = (batch[k].flatten() for k in ("input_ids", "position_ids", "sequence_ids"))
    ends = batch["last_positions"].T.flatten() if input_format == "text_both_orders" else batch["last_positions"].flatten()
    covered = torch.zeros_like(flat_ids, dtype=torch.bool)
    for ids, end in zip(sequences, ends.tolist()):
        start = end - len(ids) + 1
        assert flat_ids[start : end + 1].tolist() == ids  # whole, in one row
        assert start // width == end // width
        assert flat_pos[start : end + 1].tolist() == list(range(len(ids)))  # positions restart at 0
        assert len(set(flat_seq[start : end + 1].tolist())) == 1 and flat_seq[start] > 0
        covered[start : end + 1] = True
    assert covered.sum() == sum(len(s) for s in sequences)  # no token twice
    assert (flat_seq[~covered] == 0).all() and (flat_ids[~covered] == tiny_tokenizer.pad_token_id).all()
    assert batch["labels"].tolist() == [f["labels"] for f in features] and batch["index"].tolist() == list(range(len(features)))
    # neighbours in a row have different sequence ids: an LM target never crosses from one into the next
    row_ids = batch["sequence_ids"]
    boundary = (row_ids[:, 1:] != row_ids[:, :-1]) & (row_ids[:, :-1] > 0)
    assert boundary.any() and not (lm_target_positions(row_ids) & boundary).any()


def test_one_row_per_batch_when_row_tokens_is_none(tiny_tokenizer):
    features = features_for("text", tiny_tokenizer)
    batch = PackedCollator(FORMATS["text"], tiny_tokenizer, row_tokens=None)(features)
    assert batch["input_ids"].shape == (1, sum(len(f["input_ids"]) for f in features))
    assert (batch["sequence_ids"] > 0).all()  # no padding at all


# --------------------------------------------------------------------------- exactness


def padded_and_packed(head: str, tokenizer, row_tokens=24):
    feature_format, collate_format = HEAD_CASES[head]
    features = features_for(feature_format, tokenizer)
    padded = make_collator(collate_format, tokenizer, 8)(features)
    packed = PackedCollator(FORMATS[collate_format], tokenizer, row_tokens)(features)
    assert packed["input_ids"].numel() < padded["input_ids"].numel() + padded.get("input_ids_swapped", padded["input_ids"][:0]).numel()
    assert (packed["sequence_ids"].amax(-1) > 1).any()  # rows hold several sequences
    return features, padded, packed


def inputs(batch):
    return {k: v for k, v in batch.items() if k not in ("labels", "index")}


@pytest.mark.parametrize("head", list(HEAD_CASES))
def test_packed_logits_equal_padded_logits_for_every_sequence_head(head, backbone, tiny_tokenizer):
    model = model_for(head, backbone, weight=0.0)
    _, padded, packed = padded_and_packed(head, tiny_tokenizer)
    with torch.no_grad():
        expected, got = model(**inputs(padded))["logits"], model(**inputs(packed))["logits"]
    assert got.shape == expected.shape
    if head == "multiple_choice":  # placeholder candidates score the float minimum in both
        assert torch.equal(got == torch.finfo(torch.float32).min, expected == torch.finfo(torch.float32).min)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("leak", ["kv_cache", "all_ones_mask"])
def test_exactness_check_catches_examples_attending_to_each_other(leak, backbone, tiny_tokenizer):
    """What the exactness test guards against: GPT-2 keeps a KV cache unless use_cache=False, and any 2-D
    attention mask (all ones too) replaces the mask transformers derives from the position ids; either
    way a packed sequence attends to those before it in its row and its pooled state changes."""
    _, padded, packed = padded_and_packed("classification", tiny_tokenizer)
    extra = {"use_cache": True} if leak == "kv_cache" else {"use_cache": False, "attention_mask": torch.ones_like(packed["input_ids"])}
    with torch.no_grad():
        alone = backbone(input_ids=padded["input_ids"], use_cache=False).last_hidden_state
        alone = alone[torch.arange(len(alone)), padded["attention_mask"].sum(-1) - 1]
        exact = backbone(input_ids=packed["input_ids"], position_ids=packed["position_ids"], use_cache=False).last_hidden_state
        leaky = backbone(input_ids=packed["input_ids"], position_ids=packed["position_ids"], **extra).last_hidden_state
    torch.testing.assert_close(exact.flatten(0, 1)[packed["last_positions"]], alone, rtol=1e-5, atol=1e-5)
    leaked = leaky.flatten(0, 1)[packed["last_positions"]]
    not_first = packed["last_positions"] % packed["input_ids"].shape[1] >= torch.tensor([len(f["input_ids"]) for f in features_for("text", tiny_tokenizer)])
    assert not_first.any()
    assert (leaked - alone).abs()[not_first].amax() > 1e-3  # sequences later in a row see the ones before them


@pytest.mark.parametrize("head", list(HEAD_CASES))
def test_aux_lm_loss_under_packing_counts_real_tokens_of_each_sequence_only(head, backbone, tiny_tokenizer):
    """Same counts and LM loss as each sequence run alone by GPT2LMHeadModel (tests/test_aux_lm.py's check)."""
    features, padded, packed = padded_and_packed(head, tiny_tokenizer)
    model = model_for(head, backbone)
    sequences = sequences_of(HEAD_CASES[head][1], features)
    check_aux_lm(model, inputs(packed) | {"labels": packed["labels"]}, sequences)
    assert model.loss_counts(packed) == model.loss_counts(padded)


@pytest.mark.parametrize("head", ["classification", "similarity", "multiple_choice"])
def test_packed_training_step_has_the_padded_step_loss_and_gradients(head, tiny_tokenizer):
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=499, n_layer=2, n_embd=32, n_head=2, n_positions=256, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0)
    config._attn_implementation = "sdpa"
    model = TaskModel(GPT2Model(config), build_head(head, 32, 2, 0.0, {}, init_std=0.02), aux_lm_weight=0.5).train()
    _, padded, packed = padded_and_packed(head, tiny_tokenizer)
    grads = []
    for batch in (padded, packed):
        model.zero_grad()
        out = model(**{k: v for k, v in batch.items() if k != "index"})
        out["loss"].backward()
        grads.append((out["loss"].detach(), out["loss_terms"]["lm_loss"].detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    torch.testing.assert_close(grads[1][0], grads[0][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grads[1][1], grads[0][1], rtol=1e-5, atol=1e-6)
    for name, grad in grads[0][2].items():
        torch.testing.assert_close(grads[1][2][name], grad, rtol=1e-4, atol=1e-6, msg=name)
