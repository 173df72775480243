"""Decoder details: pad token set on tokenizer and model, right padding, last-token pooling."""

import torch
from transformers import GPT2Config, GPT2Model

from conftest import compose_config
from finetune.data.input_formats import make_collator
from finetune.data.columns import LabelEncoder
from finetune.errors import DataError
from finetune.models.backbone import load_backbone, load_tokenizer
from finetune.models.heads import pool_last_token

import pytest


def test_pad_token_is_set_on_tokenizer_and_model_config():
    cfg = compose_config(["model=tiny"])
    tokenizer, base_vocab = load_tokenizer(cfg.model, offline=True)
    assert tokenizer.pad_token == tokenizer.eos_token and tokenizer.padding_side == "right"
    backbone = load_backbone(cfg.model, tokenizer, base_vocab, offline=True)
    assert backbone.config.pad_token_id == tokenizer.pad_token_id
    assert next(backbone.parameters()).dtype == torch.float32


@pytest.mark.parametrize("fused", [True, False])
def test_gpt2_gelu_trains_as_the_fused_kernel_of_the_same_function(fused):
    """model.fused_gelu: gelu_new becomes torch's fused tanh GELU, to float rounding the same backbone."""
    cfg = compose_config(["model=tiny", f"model.fused_gelu={fused}"])
    tokenizer, base_vocab = load_tokenizer(cfg.model, offline=True)
    torch.manual_seed(0)
    backbone = load_backbone(cfg.model, tokenizer, base_vocab, offline=True).eval()
    assert backbone.config.activation_function == ("gelu_pytorch_tanh" if fused else "gelu_new")
    assert type(backbone.h[0].mlp.act).__name__ == ("GELUTanh" if fused else "NewGELUActivation")
    reference = GPT2Model(GPT2Config(**{**backbone.config.to_dict(), "activation_function": "gelu_new"})).eval()
    reference.load_state_dict(backbone.state_dict())
    ids = torch.tensor([tokenizer("a film that is good and long enough")["input_ids"]])
    with torch.no_grad():
        ours, theirs = backbone(input_ids=ids).last_hidden_state, reference(input_ids=ids).last_hidden_state
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_gpt1_tokens_are_added_and_embeddings_resized():
    cfg = compose_config(["model=tiny", "model.gpt1_tokens=true"])
    tokenizer, base_vocab = load_tokenizer(cfg.model, offline=True)
    assert len(tokenizer) == base_vocab + 3
    backbone = load_backbone(cfg.model, tokenizer, base_vocab, offline=True)
    assert backbone.get_input_embeddings().num_embeddings == len(tokenizer)
    ids = tokenizer("the film", "is good")["input_ids"]
    start, delim, extract = tokenizer.convert_tokens_to_ids(["<|start|>", "<|delim|>", "<|extract|>"])
    assert ids[0] == start and ids[-1] == extract and delim in ids


def test_pool_last_token_uses_the_attention_mask():
    hidden = torch.arange(2 * 5 * 3, dtype=torch.float32).view(2, 5, 3)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    pooled = pool_last_token(hidden, mask)
    assert torch.equal(pooled[0], hidden[0, 2]) and torch.equal(pooled[1], hidden[1, 4])


def test_pooling_is_padding_invariant_even_with_eos_inside_the_text(tiny_tokenizer):
    """Right padding with pad == eos: a text that itself ends in eos must pool that eos, not the token before."""
    torch.manual_seed(0)
    model = GPT2Model(GPT2Config(vocab_size=len(tiny_tokenizer), n_layer=2, n_embd=32, n_head=2, n_positions=64)).eval()
    eos = tiny_tokenizer.eos_token_id
    short = tiny_tokenizer("good film")["input_ids"] + [eos]
    long = tiny_tokenizer("a much longer sentence that forces padding of the short one")["input_ids"]
    collate = make_collator("text", tiny_tokenizer, pad_to_multiple_of=8)
    batch = collate([{"input_ids": short, "attention_mask": [1] * len(short)}, {"input_ids": long, "attention_mask": [1] * len(long)}])
    assert batch["input_ids"][0, len(short)] == eos  # padding is eos too
    with torch.no_grad():
        padded = pool_last_token(model(**batch).last_hidden_state, batch["attention_mask"])[0]
        alone_ids = torch.tensor([short])
        alone = pool_last_token(model(input_ids=alone_ids).last_hidden_state, torch.ones_like(alone_ids))[0]
        # What `input_ids != pad` pooling would pick: the token before the real final eos.
        wrong = model(input_ids=alone_ids).last_hidden_state[0, len(short) - 2]
    torch.testing.assert_close(padded, alone, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(padded, wrong)


def test_label_mapping_names_and_raw_values():
    encoder = LabelEncoder(["negative", "positive"], {"0": "negative", "1": "positive"}, None, "error")
    assert [encoder.encode(raw, "row") for raw in ["0", "1", "positive", 1]] == [0, 1, 1, 1]
    with pytest.raises(DataError, match="'2' is not in the label set"):
        encoder.encode("2", "dev.tsv line 3")


def test_label_mapping_drop_and_regression():
    assert LabelEncoder(["A", "B"], {}, None, "drop").encode("E", "row") == -1
    regression = LabelEncoder(None, {}, None, "error")
    assert regression.encode("3.800", "row") == 3.8
    with pytest.raises(DataError, match="not a number"):
        regression.encode("high", "row")
    with pytest.raises(DataError, match="not a finite"):
        regression.encode("nan", "row")
