"""Batching modes (bucketed, random, token_budget, packed): orders, sharding, resume and pooling.

- The batch samplers are pure functions of (seed, epoch): the same batches for the same pair,
  other batches for another epoch, every example exactly once per epoch, a fixed batch count.
- Token budgets are kept (a single example longer than the budget gets a batch of its own).
- Accelerate's shard of a batch sampler gives two processes the same number of batches, and
  `skip_first_batches` resumes an epoch where it stopped.
- Last-token pooling does not depend on what an example is batched with: the logits of a tiny
  model for an example alone equal those for it padded (or packed) inside a batch, under every mode;
  evaluation metrics are identical whatever mode training batches with.
- The fast text collator builds the same tensors as transformers' DataCollatorWithPadding.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from accelerate.data_loader import BatchSamplerShard, SkipBatchSampler
from datasets import Dataset
from omegaconf import OmegaConf, open_dict

from conftest import TINY_FAST, compose_config
from finetune.config import validate
from finetune.errors import ConfigError
from finetune.training.batching import build_eval_loader, build_train_loader, default_max_tokens
from finetune.training.evaluation import SingleProcess, evaluate_split
from finetune.training.sampler import (
    BucketBatchSampler,
    TokenBudgetBatchSampler,
    padded,
    sequence_lengths,
)

RNG = np.random.default_rng(0)
LENGTHS = np.minimum(RNG.geometric(1 / 12, size=1003), 120) + 1  # SST-2-like: mostly short, a long tail


def make_samplers(seed: int = 5):
    return {
        "bucketed": BucketBatchSampler(LENGTHS, batch_size=32, seed=seed, bucket_batches=4),  # 32 batches
        "token_budget": TokenBudgetBatchSampler(LENGTHS, max_tokens=720, seed=seed, pad_to_multiple_of=8),  # 25: odd
    }


def epoch_batches(sampler, epoch: int) -> list[list[int]]:
    sampler.set_epoch(epoch)
    return [list(b) for b in sampler]


@pytest.mark.parametrize("mode", ["bucketed", "token_budget"])
def test_order_is_a_pure_function_of_seed_and_epoch(mode):
    first, again, other_seed = make_samplers()[mode], make_samplers()[mode], make_samplers(seed=6)[mode]
    assert epoch_batches(first, 0) == epoch_batches(again, 0)
    assert epoch_batches(first, 3) == epoch_batches(again, 3)
    assert epoch_batches(first, 0) != epoch_batches(first, 1)
    assert epoch_batches(first, 0) != epoch_batches(other_seed, 0)
    # the state is the epoch only: going back replays the earlier epoch
    assert epoch_batches(first, 0) == epoch_batches(again, 0)


@pytest.mark.parametrize("mode", ["bucketed", "token_budget"])
def test_every_example_exactly_once_per_epoch_in_a_fixed_number_of_batches(mode):
    sampler = make_samplers()[mode]
    for epoch in range(4):
        batches = epoch_batches(sampler, epoch)
        assert len(batches) == len(sampler)
        assert sorted(i for b in batches for i in b) == list(range(len(LENGTHS)))


def test_bucketed_batches_are_full_and_of_similar_length():
    sampler = make_samplers()["bucketed"]
    batches = epoch_batches(sampler, 0)
    assert sorted(len(b) for b in batches)[1:] == [32] * (len(batches) - 1)  # one short batch at most
    pad = sum(len(b) * LENGTHS[b].max() - LENGTHS[b].sum() for b in batches)
    random_pad = sum(
        len(b) * LENGTHS[b].max() - LENGTHS[b].sum()
        for b in np.array_split(np.random.default_rng(1).permutation(len(LENGTHS)), len(batches))
    )
    assert pad < random_pad / 3


def test_token_budget_batches_stay_within_max_tokens():
    sampler = make_samplers()["token_budget"]
    for epoch in range(3):
        for batch in epoch_batches(sampler, epoch):
            cost = len(batch) * padded(int(LENGTHS[batch].max()), 8)
            assert cost <= 720 or len(batch) == 1
    # an example longer than the whole budget still gets trained on, alone
    alone = TokenBudgetBatchSampler([4, 4, 100, 4], max_tokens=16, seed=0)
    assert sorted(map(sorted, alone)) == [[0, 1, 3], [2]]


def test_token_budget_counts_every_sequence_of_an_example():
    """Both orders of a pair (or every choice) are sequences the collator pads to one length."""
    data = Dataset.from_dict({
        "input_ids": [[1] * n for n in (3, 9, 5, 2)],
        "input_ids_swapped": [[1] * n for n in (4, 2, 7, 2)],
    })
    lengths, counts = sequence_lengths(data)
    assert lengths.tolist() == [4, 9, 7, 2] and counts.tolist() == [2, 2, 2, 2]
    choices = Dataset.from_dict({"input_ids": [[[1] * 3, [1] * 6], [[1] * 2, [1] * 2]]})
    lengths, counts = sequence_lengths(choices)
    assert lengths.tolist() == [6, 2] and counts.tolist() == [2, 2]
    sampler = TokenBudgetBatchSampler([6, 2, 2], max_tokens=8, seed=0, sequences=[2, 2, 2])
    assert all(sampler.padded_tokens(b) <= 8 or len(b) == 1 for b in sampler)


def test_lengths_follow_a_selected_subset():
    data = Dataset.from_dict({"input_ids": [[1] * n for n in range(1, 21)]}).shuffle(seed=1).select(range(5))
    assert sequence_lengths(data)[0].tolist() == [len(x) for x in data["input_ids"]]


@pytest.mark.parametrize("mode", ["bucketed", "token_budget"])
def test_two_processes_get_the_same_number_of_batches(mode):
    """Accelerate deals whole batches round-robin; an odd count is evened out from the start."""
    sampler = make_samplers()[mode]
    for epoch in range(3):
        sampler.set_epoch(epoch)
        shards = [BatchSamplerShard(sampler, num_processes=2, process_index=rank, even_batches=True) for rank in (0, 1)]
        got = [[list(b) for b in shard] for shard in shards]
        assert len(got[0]) == len(got[1]) == len(shards[0]) == len(shards[1])
        seen = [i for rank in got for b in rank for i in b]
        assert set(seen) == set(range(len(LENGTHS)))  # everything once, plus a few repeats to even out
        assert len(got[0]) == -(-len(sampler) // 2)


def test_odd_batch_count_is_evened_out_for_bucketed_too():
    sampler = BucketBatchSampler(np.arange(1, 100), batch_size=10, seed=0)  # 10 batches, the last one of 9
    odd = BucketBatchSampler(np.arange(1, 90), batch_size=10, seed=0)  # 9 batches
    for s in (sampler, odd):
        shards = [list(BatchSamplerShard(s, num_processes=2, process_index=rank, even_batches=True)) for rank in (0, 1)]
        assert len(shards[0]) == len(shards[1]) == -(-len(s) // 2)


@pytest.mark.parametrize("mode", ["bucketed", "token_budget"])
def test_resume_mid_epoch_skips_exactly_the_batches_done(mode):
    sampler = make_samplers()[mode]
    full = epoch_batches(sampler, 2)
    resumed = make_samplers()[mode]
    resumed.set_epoch(2)
    assert [list(b) for b in SkipBatchSampler(resumed, skip_batches=7)] == full[7:]


# --------------------------------------------------------------------------- pooling


def tiny_model():
    from transformers import GPT2Config, GPT2Model

    from finetune.models.heads import ClassificationHead
    from finetune.models.task_model import TaskModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=300, n_positions=128, n_embd=32, n_layer=2, n_head=2)
    config._attn_implementation = "sdpa"
    return TaskModel(GPT2Model(config), ClassificationHead(32, 3, 0.1, {})).eval()


def _trainer_cfg(**overrides):
    base = dict(
        batch_size=4, eval_batch_size=None, batching="random", bucket_batches=2, max_tokens=None, pack_length=None,
        pad_to_multiple_of=8, pad_to_max_length=False, num_workers=0, eval_sort_by_length=True,
    )
    return OmegaConf.create({**base, **overrides})


class _Tokenizer:
    pad_token_id = 0  # pads with a real token id on purpose: pooling must use the mask, not the id


@pytest.mark.parametrize(
    "overrides",
    [
        {"batching": "random"},
        {"batching": "random", "pad_to_max_length": True},
        {"batching": "bucketed"},
        {"batching": "token_budget", "max_tokens": 48},
        {"batching": "token_budget"},
        {"batching": "packed"},
        {"batching": "packed", "pack_length": 16},
    ],
    ids=["random", "pad_to_max_length", "bucketed", "token_budget", "token_budget_default", "packed", "packed_short_rows"],
)
def test_pooled_logits_do_not_depend_on_the_batch(overrides):
    model = tiny_model()
    rng = np.random.default_rng(3)
    sequences = [rng.integers(1, 300, size=n).tolist() for n in [3, 1, 40, 7, 2, 25, 11, 5, 60, 4, 9, 13]]
    data = Dataset.from_dict({
        "input_ids": sequences, "attention_mask": [[1] * len(s) for s in sequences], "labels": list(range(len(sequences))),
    })
    with torch.no_grad():
        alone = torch.cat([model(input_ids=torch.tensor([s]), attention_mask=torch.ones(1, len(s), dtype=torch.long))["logits"] for s in sequences])
    cfg = _trainer_cfg(**overrides)
    loader, sampler = build_train_loader(cfg, data, _Tokenizer(), "text", max_length=64, seed=1)
    seen, padded_batches = {}, 0
    for epoch in range(2):
        sampler.set_epoch(epoch)
        for batch in loader:
            if "sequence_ids" in batch:  # packed: what matters is several sequences sharing a row
                padded_batches += int((batch["sequence_ids"].amax(-1) > 1).any())
            else:
                padded_batches += int((batch["attention_mask"] == 0).any())
            if overrides.get("pad_to_max_length"):
                assert batch["input_ids"].shape[1] == 64
            with torch.no_grad():
                logits = model(**{k: v for k, v in batch.items() if k != "labels"})["logits"]
            for index, row in zip(batch["labels"].tolist(), logits):
                torch.testing.assert_close(row, alone[index], rtol=1e-5, atol=1e-5)
                seen[index] = seen.get(index, 0) + 1
    assert padded_batches > 0  # the comparison did involve padding
    assert seen == {i: 2 for i in range(len(sequences))}
    # evaluation: longest first, each example once, same logits
    eval_loader = build_eval_loader(cfg, data, _Tokenizer(), "text", max_length=64, seed=1)
    order = [i for batch in eval_loader for i in batch["labels"].tolist()]
    assert sorted(order) == list(range(len(sequences))) and order[0] == 8
    for batch in eval_loader:
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])["logits"]
        torch.testing.assert_close(logits, alone[batch["labels"]], rtol=1e-5, atol=1e-5)


def test_backbone_without_padding_mask_matches_the_masked_call_on_real_tokens():
    """encode_last drops the padding mask: right padding + causal attention make it redundant."""
    backbone = tiny_model().backbone
    ids = torch.randint(1, 300, (3, 16))
    mask = torch.ones(3, 16, dtype=torch.long)
    mask[0, 5:] = 0
    mask[2, 11:] = 0
    with torch.no_grad():
        masked = backbone(input_ids=ids, attention_mask=mask).last_hidden_state
        unmasked = backbone(input_ids=ids).last_hidden_state
    real = mask.bool()
    torch.testing.assert_close(unmasked[real], masked[real], rtol=1e-5, atol=1e-5)
    assert backbone.config._attn_implementation == "sdpa"


def test_text_collator_matches_data_collator_with_padding(tiny_tokenizer):
    from transformers import DataCollatorWithPadding

    from finetune.data.input_formats import make_collator

    texts = ["a", "the film is good", "not good at all , really", "fine"]
    encoded = tiny_tokenizer(texts)
    features = [{"input_ids": i, "attention_mask": m, "labels": label} for i, m, label in zip(encoded["input_ids"], encoded["attention_mask"], [0, 1, 0, 1])]
    for multiple in (None, 8):
        ours = make_collator("text", tiny_tokenizer, multiple)(features)
        reference = DataCollatorWithPadding(tiny_tokenizer, pad_to_multiple_of=multiple, return_tensors="pt")(features)
        assert set(ours) == set(reference)
        for key in reference:
            assert torch.equal(ours[key], reference[key]), key


def test_default_max_tokens_matches_bucketed_batch_count_roughly():
    lengths = LENGTHS
    budget = default_max_tokens(lengths, np.ones_like(lengths), batch_size=32, multiple=8)
    sampler = TokenBudgetBatchSampler(lengths, budget, seed=0, pad_to_multiple_of=8)
    bucketed = BucketBatchSampler(lengths, batch_size=32, seed=0)
    assert 0.8 * len(bucketed) <= len(sampler) <= 1.5 * len(bucketed)


# --------------------------------------------------------------------------- config + loop


def test_config_accepts_the_batching_options_and_rejects_unknown_ones():
    cfg = compose_config([*TINY_FAST, "trainer.batching=token_budget", "trainer.max_tokens=512", "trainer.compile=false"])
    validate(cfg)
    for bad in (["trainer.batching=sorted"], ["trainer.max_tokens=0"], ["trainer.bucket_batches=0"]):
        with pytest.raises(ConfigError):
            validate(compose_config([*TINY_FAST, *bad]))


def _run(tmp_path, name, extra):
    from finetune.run import run

    cfg = compose_config(
        [
            "experiment=quickstart", *TINY_FAST, "trainer.max_train_samples=200", "trainer.max_eval_samples=50",
            "trainer.batch_size=16", "trainer.max_steps=8", "trainer.eval_every=4", "trainer.log_every=2",
            "model.dropout=0", "model.head_dropout=0", *extra,
        ],
        output_dir=tmp_path / name,
    )
    try:
        run(cfg)
    finally:
        from finetune.sweep import end_job

        end_job()
    return tmp_path / name


def test_packed_loader_is_sharded_like_random_batches():
    """packed cuts the shuffled order into batch_size examples as random does; Accelerate shards it alike."""
    sequences = [[1] * n for n in LENGTHS[:101]]
    data = Dataset.from_dict({"input_ids": sequences, "labels": list(range(len(sequences)))})
    loaders = {mode: build_train_loader(_trainer_cfg(batching=mode, batch_size=8), data, _Tokenizer(), "text", 128, seed=3)
               for mode in ("random", "packed")}
    for epoch in (0, 1):
        orders = {}
        for mode, (loader, sampler) in loaders.items():
            sampler.set_epoch(epoch)
            orders[mode] = [batch["labels"].tolist() for batch in loader]
        assert orders["packed"] == orders["random"]
        for mode, (loader, sampler) in loaders.items():
            shards = [list(BatchSamplerShard(loader.batch_sampler, num_processes=2, process_index=rank, even_batches=True)) for rank in (0, 1)]
            assert len(shards[0]) == len(shards[1]) == 7  # 13 batches, evened out
            assert {i for rank in shards for b in rank for i in b} == set(range(101))


def test_evaluation_metrics_are_identical_whatever_training_batches_with():
    model = tiny_model()
    rng = np.random.default_rng(4)
    sequences = [rng.integers(1, 300, size=n).tolist() for n in rng.integers(1, 50, size=37)]
    data = Dataset.from_dict({"input_ids": sequences, "labels": rng.integers(0, 3, size=37).tolist(), "index": list(range(37))})
    results = {}
    for mode in ("bucketed", "random", "token_budget", "packed"):
        loader = build_eval_loader(_trainer_cfg(batching=mode, eval_batch_size=8), data, _Tokenizer(), "text", max_length=64, seed=1)
        results[mode] = evaluate_split(SingleProcess(), model, loader, ["accuracy"], data)
    assert results["random"]["num_examples"] == 37
    assert all(r == results["random"] for r in results.values())


@pytest.mark.parametrize("mode", ["bucketed", "token_budget", "packed"])
def test_training_resumes_mid_epoch_to_the_same_weights(tmp_path, mode):
    """8 steps straight vs 4 steps, then resume from that checkpoint (13 batches per epoch)."""
    from safetensors.torch import load_file

    extra = [f"trainer.batching={mode}"] + (["trainer.max_tokens=200"] if mode == "token_budget" else [])
    straight = _run(tmp_path, "straight", extra)
    resumed = _run(tmp_path, "resumed", [*extra, f"trainer.resume={straight / 'checkpoints' / 'step-4'}"])
    a = load_file(str(straight / "checkpoints" / "step-8" / "model.safetensors"))
    b = load_file(str(resumed / "checkpoints" / "step-8" / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)
