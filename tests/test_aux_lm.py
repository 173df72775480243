"""The auxiliary LM loss (task.aux_lm_weight, GPT-1's λ): over the real tokens of every sequence a head
reads, never a pad, a token mean over the whole optimizer step.

- counts and sums against hand computations (each sequence alone, unpadded, through GPT2LMHeadModel):
  both orders of a similarity pair, every multiple-choice candidate (placeholders add nothing), span windows;
- gradient equivalence through the training loop's own step: 1 x batch 16 == batch 8 x grad_accum 2
  with very different lengths, while a mean of per-micro-batch means does not match.
"""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F
from transformers import GPT2Config, GPT2LMHeadModel, GPT2Model

from conftest import TINY_FAST, compose_config
from finetune.data.input_formats import FORMATS, make_collator
from finetune.models.heads import HEADS
from finetune.models.task_model import TaskModel, build_head
from test_bad_inputs import SST2_HEADER, lines, write

SHORT = ["good .", "bad !", "fine", "meh .", "great", "awful .", "ok", "nice ."]
LONG = [" ".join(["the long winding plot of this film keeps going on and on"] * 2) + f" {i} ." for i in range(8)]


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=499, n_layer=2, n_embd=32, n_head=2, n_positions=256, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0)
    return GPT2Model(config)


def model_for(head: str, backbone, weight: float = 0.5, args=None) -> TaskModel:
    torch.manual_seed(1)
    num_labels = 2
    return TaskModel(backbone, build_head(head, backbone.config.n_embd, num_labels, 0.0, args or {}, init_std=0.02), aux_lm_weight=weight).eval()


def hand_lm(backbone, sequences: list[list[int]]) -> tuple[float, int]:
    """(summed next-token NLL, targets) with each sequence run alone, unpadded, by transformers' own LM."""
    lm = GPT2LMHeadModel(backbone.config)
    lm.transformer.load_state_dict(backbone.state_dict())
    lm.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for ids in sequences:
            if len(ids) < 2:
                continue
            out = lm(input_ids=torch.tensor([ids]), labels=torch.tensor([ids]))
            total += float(out.loss) * (len(ids) - 1)
            count += len(ids) - 1
    return total, count


def check(model, batch, sequences):
    """loss_counts and the lm_loss term equal the hand computation over `sequences` (real tokens only)."""
    expected_sum, expected_count = hand_lm(model.backbone, sequences)
    counts = model.loss_counts(batch)
    assert int(counts["lm"]) == expected_count
    with torch.no_grad():
        out = model(**batch)
    torch.testing.assert_close(out["loss_terms"]["lm_loss"], torch.tensor(expected_sum / expected_count), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["loss"], out["loss_terms"]["task_loss"] + 0.5 * out["loss_terms"]["lm_loss"])


def test_aux_lm_covers_both_orders_of_a_similarity_pair(backbone, tiny_tokenizer):
    texts, pairs = ["a man plays a guitar loudly on the stage tonight", "ok"], ["someone plays music", "a dog runs in the park all day"]
    features = FORMATS["text_both_orders"].features({"text": texts, "text_pair": pairs}, tiny_tokenizer, 64, {}, True)
    rows = [{k: v[i] for k, v in features.items() if k != "truncated"} | {"labels": i % 2} for i in range(2)]
    batch = make_collator("text_both_orders", tiny_tokenizer, 8)(rows)
    assert (batch["attention_mask"] == 0).any() and (batch["attention_mask_swapped"] == 0).any()  # pads to exclude
    model = model_for("similarity", backbone)
    assert len(model.head.sequence_masks(batch)) == 2
    check(model, batch, features["input_ids"] + features["input_ids_swapped"])


def test_aux_lm_covers_every_candidate_and_no_placeholder(backbone, tiny_tokenizer):
    batch_rows = {"context": ["the cat sat on the mat", "rain fell"], "choices": [["it slept", "it ran away quickly", "no"], ["wet"]]}
    features = FORMATS["choices"].features(batch_rows, tiny_tokenizer, 64, {}, True)
    rows = [{"input_ids": features["input_ids"][i], "attention_mask": features["attention_mask"][i], "labels": 0} for i in range(2)]
    batch = make_collator("choices", tiny_tokenizer, 8)(rows)
    assert batch["input_ids"].shape[:2] == (2, 3) and "choice_mask" in batch  # two one-token placeholder candidates
    model = model_for("multiple_choice", backbone)
    check(model, batch, [ids for candidates in features["input_ids"] for ids in candidates])


def test_aux_lm_covers_span_windows(backbone, tiny_tokenizer):
    ids = [[5, 6, 7, 8, 9, 10, 11], [12, 13, 14]]
    width = 8
    batch = {
        "input_ids": torch.tensor([row + [tiny_tokenizer.pad_token_id] * (width - len(row)) for row in ids]),
        "attention_mask": torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in ids]),
        "labels": torch.tensor([[1, 2], [0, 0]]),
    }
    check(model_for("span", backbone), batch, ids)


def test_aux_lm_off_adds_no_term_and_the_lm_head_refuses_it(backbone):
    batch = {"input_ids": torch.tensor([[1, 2, 3]]), "attention_mask": torch.ones(1, 3, dtype=torch.long), "labels": torch.tensor([1])}
    model = model_for("classification", backbone, weight=0.0)
    assert set(model.loss_counts(batch)) == {"task"} and "loss_terms" not in model(**batch)
    assert all(hasattr(h, "sequence_masks") for h in HEADS.values())


# ------------------------------------------------------------------------ gradient equivalence


def sst2_rows(root):
    """Eight short and eight long sentences: token counts per micro-batch differ about tenfold."""
    rows = [f"{text}\t{i % 2}" for i, text in enumerate(SHORT + LONG)]
    write(root / "glue" / "SST-2" / "train.tsv", lines(SST2_HEADER, *rows))
    write(root / "glue" / "SST-2" / "dev.tsv", lines(SST2_HEADER, *rows[:4]))
    return root


class GradientRecorder:
    """Stands in for the optimizer: `step` keeps a copy of every gradient instead of updating."""

    def __init__(self, model):
        self.model, self.grads = model, None

    def step(self):
        self.grads = {n: p.grad.detach().clone() for n, p in self.model.named_parameters() if p.grad is not None}

    def zero_grad(self, set_to_none=True):
        self.model.zero_grad(set_to_none=set_to_none)


def flat(grads):
    return torch.cat([g.flatten() for _, g in sorted(grads.items())])


def test_batch_16_equals_batch_8_times_grad_accum_2_and_a_mean_of_means_does_not(tmp_path, aux_lm_weight=0.5):
    from finetune.setup import setup
    from finetune.modes.train import build_trainer

    cfg = compose_config(["task=sst2", *TINY_FAST, f"data_dir={sst2_rows(tmp_path / 'data')}", f"task.aux_lm_weight={aux_lm_weight}",
                          "model.dropout=0", "model.head_dropout=0", "optim.max_grad_norm=1e9", "trainer.batch_size=8",
                          "trainer.grad_accum=2", "trainer.max_steps=1"], output_dir=tmp_path / "run")
    ctx = setup(cfg, train_split="train", eval_splits=["validation"], weights="pretrained")
    trainer = build_trainer(ctx)
    trainer.optimizer = recorder = GradientRecorder(trainer.model)
    trainer.model.train()
    collate = make_collator("text", ctx.tokenizer, 8)
    features = ctx.data.train
    order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))  # short ones first
    examples = [features[i] for i in order]

    def grads(window):
        trainer._train_step(window)  # the loop's own step: normalizers over the whole window, backward per micro-batch
        return flat(recorder.grads)

    one_batch = grads([collate(examples)])
    two_micro_batches = grads([collate(examples[:8]), collate(examples[8:])])
    counts = [int(trainer.model.loss_counts(collate(half))["lm"]) for half in (examples[:8], examples[8:])]
    assert counts[1] > 8 * counts[0]  # very different lengths
    torch.testing.assert_close(two_micro_batches, one_batch, rtol=1e-4, atol=1e-7)
    exact = float((two_micro_batches - one_batch).norm() / one_batch.norm())

    # the naive way: each micro-batch averaged over its own tokens, then the two means averaged
    trainer.model.zero_grad(set_to_none=True)
    for half in (examples[:8], examples[8:]):
        (trainer.model(**collate(half))["loss"] / 2).backward()
    mean_of_means = flat({n: p.grad for n, p in trainer.model.named_parameters() if p.grad is not None})
    relative = float((mean_of_means - one_batch).norm() / one_batch.norm())
    print(f"relative gradient difference: step-normalised {exact:.2e}, mean of means {relative:.2e}")
    assert relative > 0.05, relative  # far outside the tolerance the step-normalised loss meets
    assert exact < 1e-4 < relative / 100
