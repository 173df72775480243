"""Language modelling (the `lm` head): raw text -> documents -> blocks, the shifted loss, perplexity
(blocks and strided windows, against a hand computation), samples, the GPT2LMHeadModel export with
pipeline("text-generation"), two stages (an LM export starts a task), and bad inputs.

All on the tiny random model and the project's tiny tokenizer (data/tiny-tokenizer).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset
from transformers import GPT2Config, GPT2LMHeadModel, GPT2Model, pipeline

from conftest import ROOT, TINY_FAST, compose_config
from finetune.data import blocks
from finetune.data.pipeline import load_rows
from finetune.data.readers import read_text
from finetune.models.heads import HEADS, LanguageModelHead
from finetune.models.task_model import TaskModel
from finetune.training.batching import build_eval_loader, build_train_loader
from finetune.training.evaluation import EVALUATORS, SingleProcess, compute_metrics
from test_bad_inputs import SST2_DEV, SST2_HEADER, SST2_TRAIN, fails, lines, train_in_process, write

WORDS = "the cat sat on a mat and looked at the dog who ran to the tree by the river".split()


def story(i: int, n: int = 12) -> str:
    return " ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(n)) + " ."


def shakespeare_dir(root: Path, text: str) -> Path:
    write(root / "text" / "tinyshakespeare_input.txt", text)
    return root


SPEECHES = "".join(f"SPEAKER {i % 3}:\n{story(i)}\n{story(i + 1, 6)}\n\n" for i in range(120))


class Options(dict):
    """The attributes of a source config that the text reader reads."""

    __getattr__ = dict.get


# ------------------------------------------------------------------------------------ raw text


def test_text_reader_documents_are_lines_paragraphs_or_files(tmp_path):
    a = write(tmp_path / "a.txt", " = Title = \n\nfirst line  \nsecond line\n \t \nthird\n\n\n")
    b = write(tmp_path / "b.txt", "other file\n")
    read = lambda document: read_text(Options(document=document, encoding="utf-8-sig"), [a, b])["text"]  # noqa: E731
    assert read("line") == [" = Title =", "first line", "second line", "third", "other file"]
    # a whitespace-only line separates paragraphs too; lines inside a paragraph keep their newline
    assert read("paragraph") == [" = Title =", "first line  \nsecond line", "third", "other file"]
    assert read("file") == [" = Title = \n\nfirst line  \nsecond line\n \t \nthird", "other file"]
    assert read(None) == read("line")


def test_every_document_ends_with_one_end_of_text_token(tiny_tokenizer):
    docs = ["the cat sat", "  ", "on the mat"]
    out = blocks.document_tokens({"text": docs}, tiny_tokenizer, 8, {}, True)
    eos = tiny_tokenizer.eos_token_id
    expected = [tiny_tokenizer(d, add_special_tokens=False)["input_ids"] + [eos] for d in ("the cat sat", "on the mat")]
    assert out["input_ids"] == expected  # the blank document is skipped, not given an empty EOS


def test_labelled_choice_is_appended_to_the_document():
    batch = {"text": ["Ann cooked. ", "Bob ran."], "choices": [["It burnt.", "It was tasty."], ["He won.", "He slept."]], "label": [1, 0]}
    assert blocks.documents_of(batch) == ["Ann cooked. It was tasty.", "Bob ran. He won."]


def test_rocstories_text_documents_are_the_stories_with_their_right_ending(tmp_path):
    header = "InputStoryid,InputSentence1,InputSentence2,InputSentence3,InputSentence4,RandomFifthSentenceQuiz1,RandomFifthSentenceQuiz2,AnswerRightEnding"
    rows = [f"id{i},S{i}a.,S{i}b.,S{i}c.,S{i}d.,Right{i}.,Wrong{i}.,1" if i % 2 else f"id{i},S{i}a.,S{i}b.,S{i}c.,S{i}d.,Wrong{i}.,Right{i}.,2"
            for i in range(20)]
    write(tmp_path / "storycloze" / "cloze_test_val__spring2016.csv", lines(header, *rows))
    cfg = compose_config(["task=rocstories_text", f"data_dir={tmp_path}"])
    found, stats = load_rows(cfg, HEADS["lm"], True, ["train", "validation"], "train")
    documents = [d for split in ("train", "validation") for d in blocks.documents_of(found[split][:])]
    assert sorted(documents) == sorted(f"S{i}a. S{i}b. S{i}c. S{i}d. Right{i}." for i in range(20))
    assert stats["validation"]["rows"] == 2 and stats["validation"]["carved_from"] == "train"  # 10% held out


def _rows(texts):
    return Dataset.from_dict({"text": texts})


def test_blocks_cut_the_concatenated_stream_and_count_the_remainder(tiny_tokenizer):
    texts = [story(i, 3 + i % 9) for i in range(40)]
    cfg = compose_config(["task=tinyshakespeare", "task.max_length=16"])
    features, stats = blocks.featurize(_rows(texts), tiny_tokenizer, cfg.task, training=True, where="t")
    stream = [t for text in texts for t in tiny_tokenizer(text, add_special_tokens=False)["input_ids"] + [tiny_tokenizer.eos_token_id]]
    count = len(stream) // 16
    assert features["input_ids"] == [stream[i * 16 : (i + 1) * 16] for i in range(count)]
    assert stats == {"documents": 40, "empty_documents": 0, "tokens": len(stream), "block_size": 16, "stride": None,
                     "blocks": count, "predicted_tokens": count * 15, "dropped_tokens": len(stream) - count * 16}
    assert 0 < stats["dropped_tokens"] < 16 and "index" not in features.column_names  # the example has a remainder
    evals, _ = blocks.featurize(_rows(texts), tiny_tokenizer, cfg.task, training=False, where="t")
    assert evals["index"] == list(range(count))


def test_strided_windows_score_every_token_but_the_first_exactly_once():
    for total, length, stride in [(40, 8, 3), (40, 8, 7), (41, 8, 1), (8, 8, 4), (100, 16, 16 - 1)]:
        starts, score_from = blocks.window_bounds(total, length, stride)
        scored = [s + p for s, f in zip(starts, score_from) for p in range(f, length)]
        assert sorted(scored) == list(range(1, total)), (total, length, stride)
        assert all(0 <= s <= total - length for s in starts)
        context = [p for s, f in zip(starts, score_from) for p in range(f, length) if s > 0]
        assert min(context, default=length) >= length - stride  # every scored token keeps >= max_length - stride of context


def test_block_batches_are_never_padded(tiny_tokenizer):
    """Blocks of 13 tokens with pad_to_multiple_of=8 (dynamic padding's default on CUDA) stay 13 wide,
    in every batching mode (`packed` reads blocks as they are: they have no padding to remove)."""
    cfg = compose_config(["task=tinyshakespeare", "task.max_length=13", "trainer.batch_size=4", "trainer.pad_to_multiple_of=8"])
    features, _ = blocks.featurize(_rows([story(i) for i in range(30)]), tiny_tokenizer, cfg.task, training=True, where="t")
    for mode in ("random", "bucketed", "token_budget", "packed"):
        cfg.trainer.batching = mode
        loader, _ = build_train_loader(cfg.trainer, features, tiny_tokenizer, "blocks", 13, seed=0, on_cuda=True)
        for batch in loader:
            assert batch["input_ids"].shape[1] == 13 and set(batch) == {"input_ids", "labels"}
            assert torch.equal(batch["labels"], batch["input_ids"])


# ---------------------------------------------------------------------------- loss and metrics


@pytest.fixture(scope="module")
def tiny_lm():
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=64, n_layer=2, n_embd=32, n_head=2, n_positions=64, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0)
    return TaskModel(GPT2Model(config), LanguageModelHead(32, 1, 0.0, {})).eval()


def _log_prob(backbone, context: list[int], target: int) -> float:
    """log p(target | context) from the model on exactly that context (the hand computation)."""
    with torch.no_grad():
        hidden = backbone(input_ids=torch.tensor([context])).last_hidden_state[0, -1]
    return float(torch.log_softmax(hidden @ backbone.wte.weight.T, -1)[target])


def test_lm_loss_is_the_shifted_cross_entropy_over_scored_positions(tiny_lm):
    ids = torch.randint(0, 64, (3, 10), generator=torch.Generator().manual_seed(1))
    labels = ids.clone()
    labels[1, :6] = blocks.IGNORE_INDEX  # a strided window scoring positions 6..9 only
    out = tiny_lm(input_ids=ids, labels=labels)
    hand = [-_log_prob(tiny_lm.backbone, ids[r, :p].tolist(), int(ids[r, p])) for r in range(3) for p in range(1, 10)
            if not (r == 1 and p < 6)]
    assert tiny_lm.loss_counts({"labels": labels})["task"] == len(hand) == 2 * 9 + 4
    torch.testing.assert_close(out["loss"], torch.tensor(sum(hand) / len(hand)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("stride", [None, 3, 5])
def test_perplexity_matches_a_hand_computation_token_by_token(tiny_lm, stride):
    """exp(mean NLL per predicted token), every token scored with the context its block or window gives it."""
    length, generator = 8, np.random.default_rng(2)
    docs = [generator.integers(1, 63, size=n).tolist() for n in (4, 7, 3, 6)]  # token ids; 63 plays end-of-text

    class IdTokenizer:
        eos_token_id = 63

        def __call__(self, texts, **kwargs):
            return {"input_ids": [list(map(int, t.split())) for t in texts]}

    cfg = compose_config(["task=tinyshakespeare", f"task.max_length={length}", f"task.head_args.stride={stride or 'null'}"])
    features, stats = blocks.featurize(_rows([" ".join(map(str, d)) for d in docs]), IdTokenizer(), cfg.task, False, "t")
    stream = [t for d in docs for t in d + [63]]
    nll = []
    if stride is None:
        for b in range(len(stream) // length):
            block = stream[b * length : (b + 1) * length]
            nll += [-_log_prob(tiny_lm.backbone, block[:p], block[p]) for p in range(1, length)]
    else:
        end = length  # the first window scores its own tokens; each later one the `stride` (or fewer) tokens after
        nll += [-_log_prob(tiny_lm.backbone, stream[:p], stream[p]) for p in range(1, length)]
        while end < len(stream):
            new_end = min(end + stride, len(stream))
            nll += [-_log_prob(tiny_lm.backbone, stream[new_end - length : p], stream[p]) for p in range(end, new_end)]
            end = new_end
    assert stats["predicted_tokens"] == len(nll) and stats["stride"] == stride
    loader = build_eval_loader(cfg.trainer, features, None, "blocks", length, seed=0)
    outputs = EVALUATORS["tokens"].outputs(SingleProcess(), tiny_lm, loader, features)
    metrics = compute_metrics(tiny_lm.head, outputs, ["perplexity", "accuracy"])
    assert metrics["perplexity"] == pytest.approx(math.exp(sum(nll) / len(nll)), rel=1e-5)
    assert metrics["nll_per_token"] == pytest.approx(sum(nll) / len(nll), rel=1e-5)
    assert metrics["num_examples"] == stats["blocks"] and 0 <= metrics["accuracy"] <= 1


def test_eval_batches_of_any_size_give_the_same_perplexity(tiny_lm):
    ids = torch.randint(0, 64, (7, 12), generator=torch.Generator().manual_seed(3))
    features = Dataset.from_dict({"input_ids": ids.tolist(), "index": list(range(7))})
    cfg = compose_config(["task=tinyshakespeare", "task.max_length=12"])
    results = []
    for batch_size in (1, 3, 7):
        cfg.trainer.eval_batch_size = batch_size
        loader = build_eval_loader(cfg.trainer, features, None, "blocks", 12, seed=0)
        results.append(compute_metrics(tiny_lm.head, EVALUATORS["tokens"].outputs(SingleProcess(), tiny_lm, loader, features), ["perplexity"]))
    assert results[0]["perplexity"] == pytest.approx(results[1]["perplexity"], rel=1e-6) == pytest.approx(results[2]["perplexity"], rel=1e-6)
    # logits made a few rows at a time (a small memory cap) give the same sums
    chunked = tiny_lm.head.score_tokens(tiny_lm.backbone, ids, ids, max_logits=64 * 11)
    whole = tiny_lm.head.score_tokens(tiny_lm.backbone, ids, ids)
    torch.testing.assert_close(chunked[0], whole[0])


# --------------------------------------------------------------------------- a run, end to end


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory):
    """tinyshakespeare's YAML on synthetic speeches: 4 steps of the tiny model, evaluated at steps 2 and 4."""
    root = tmp_path_factory.mktemp("lm")
    data = shakespeare_dir(root / "data", SPEECHES)
    args = [*TINY_FAST, "task=tinyshakespeare", f"data_dir={data}", "task.max_length=32", "optim.lr=3e-3",
            "trainer.batch_size=8", "trainer.max_steps=4", "trainer.eval_every=2", "task.head_args.generation.max_new_tokens=12"]
    result = train_in_process(args, root / "run")
    assert result.code in (0, None), result.stderr[-3000:]
    return root, data, result


def test_lm_run_reports_perplexity_and_writes_samples(lm_run):
    root, _, result = lm_run
    run = root / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    history = [h["eval_validation"]["perplexity"] for h in metrics["history"]]
    assert history[1] < history[0] < 499  # falls below the uniform distribution over the tiny vocabulary
    assert metrics["main_metric"] == "perplexity" and metrics["main_metric_mode"] == "min" and metrics["best_step"] == 4
    validation = metrics["data"]["validation"]
    assert validation["block_size"] == 32 and validation["stride"] is None
    assert validation["predicted_tokens"] == 31 * validation["blocks"] == 31 * metrics["eval"]["num_examples"]
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert [(s["step"], s["prompt"]) for s in samples] == [(2, "ROMEO:\n"), (2, "First Citizen:\n"), (4, "ROMEO:\n"), (4, "First Citizen:\n")]
    assert all(s["continuation"] for s in samples)
    assert "sample 0 at step 4" in (run / "train.log").read_text()


def test_lm_export_generates_through_pipeline_like_the_samples(lm_run):
    root, _, _ = lm_run
    model_dir = root / "run" / "model"
    config = json.loads((model_dir / "config.json").read_text())
    assert config["architectures"] == ["GPT2LMHeadModel"]
    assert json.loads((model_dir / "generation_config.json").read_text())["max_new_tokens"] == 12
    generate = pipeline("text-generation", model=str(model_dir), device="cpu")
    last = [json.loads(line) for line in (root / "run" / "samples.jsonl").read_text().splitlines()][-2:]
    for sample in last:  # greedy: the exported best (step 4) model continues as its samples did
        assert generate(sample["prompt"])[0]["generated_text"] == sample["prompt"] + sample["continuation"]
    # the LM head is the tied embedding: the export holds one matrix for both
    exported = GPT2LMHeadModel.from_pretrained(model_dir)
    assert exported.lm_head.weight.data_ptr() == exported.transformer.wte.weight.data_ptr()
    assert "text-generation" in (model_dir / "README.md").read_text()


def test_mode_evaluate_on_the_export_and_on_a_pretrained_lm(lm_run, tmp_path):
    root, data, _ = lm_run
    base = [*TINY_FAST, "task=tinyshakespeare", f"data_dir={data}", "task.max_length=32", "mode=evaluate"]
    trained = json.loads((root / "run" / "metrics.json").read_text())["eval"]["perplexity"]
    result = train_in_process([*base, "model.from_scratch=false", f"model.name_or_path={root / 'run' / 'model'}"], tmp_path / "a")
    assert result.code in (0, None), result.stderr[-3000:]
    again = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert again["eval"]["perplexity"] == pytest.approx(trained, rel=1e-6)
    assert (tmp_path / "a" / "samples.jsonl").is_file()
    # a strided evaluation scores more tokens, with more context each, and says so
    result = train_in_process([*base, "model.from_scratch=false", f"model.name_or_path={root / 'run' / 'model'}",
                               "task.head_args.stride=8"], tmp_path / "b")
    strided = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert strided["data"]["validation"]["stride"] == 8 and strided["eval"]["perplexity"] != again["eval"]["perplexity"]
    assert strided["data"]["validation"]["predicted_tokens"] == strided["data"]["validation"]["tokens"] - 1
    # a plain pretrained GPT-2 directory is a complete LM (the head is its embedding): no fresh_head needed
    pretrained = root / "pretrained"
    GPT2LMHeadModel(GPT2Config(vocab_size=499, n_layer=1, n_embd=16, n_head=2, n_positions=64)).save_pretrained(pretrained)
    result = train_in_process([*base, "model.from_scratch=false", f"model.name_or_path={pretrained}",
                               f"model.tokenizer={ROOT / 'data' / 'tiny-tokenizer'}"], tmp_path / "c")
    assert result.code in (0, None), result.stderr[-3000:]
    assert json.loads((tmp_path / "c" / "metrics.json").read_text())["model"]["kind"] == "pretrained"


def test_lm_export_starts_a_classification_task_from_the_adapted_backbone(lm_run, tmp_path):
    """Stage 2: model.name_or_path=<LM run>/model -> the LM head is dropped, a fresh task head added."""
    from finetune.setup import setup

    root, _, _ = lm_run
    model_dir = root / "run" / "model"
    cfg = compose_config(["experiment=quickstart", *TINY_FAST, "model.from_scratch=false", f"model.name_or_path={model_dir}",
                          "trainer.max_train_samples=16", "trainer.max_eval_samples=16"], output_dir=tmp_path / "run")
    ctx = setup(cfg, train_split="train", eval_splits=["validation"], weights="pretrained")
    adapted = GPT2LMHeadModel.from_pretrained(model_dir).transformer.state_dict()
    ours = ctx.model.backbone.state_dict()
    assert set(ours) == set(adapted) and all(torch.equal(ours[k], adapted[k]) for k in adapted)
    assert type(ctx.model.head).__name__ == "ClassificationHead" and ctx.model.head.num_labels == 2


# ---------------------------------------------------------------------------------- bad inputs


def lm_fails(tmp_path, args, *expected, text: str = SPEECHES):
    data = shakespeare_dir(tmp_path / "data", text)
    return fails(tmp_path, ["task=tinyshakespeare", f"data_dir={data}", "task.max_length=32", *args], *expected)


@pytest.mark.parametrize("args, expected", [
    (["task.head_args.sample_prompts=[1,2]"], "task.head_args.sample_prompts = [1, 2]: expected a list of strings"),
    (["task.head_args.sample_prompts=hello"], "task.head_args.sample_prompts = 'hello': expected a list of strings"),
    (["task.aux_lm_weight=0.5"], "task.aux_lm_weight=0.5: the auxiliary LM loss is for task heads; the 'lm' head's loss already is the LM loss"),
    (["task.head_args.stride=32"], r"task.head_args.stride=32: expected an integer in [1, task.max_length - 1 = 31]"),
    (["+task.head_args.generation.max_new_token=5"], "task.head_args.generation: unknown field(s) ['max_new_token']"),
    (["+task.head_args.generation.temperature=0.5"], "`temperature`: `do_sample` is not set to `True`"),
    (["model.gpt1_tokens=true"], "model.gpt1_tokens=true: the 'lm' head reads raw text with no input template"),
    (["task.metrics=[perplexity,f1]"], "task.metrics ['f1'] do not apply to the 'lm' head"),
    (["task.main_metric_mode=max"], "task.main_metric 'perplexity' is better when lower: set task.main_metric_mode=min"),
    (["mode=predict"], "mode=predict: task 'tinyshakespeare' is language modelling, with no labels to predict; use mode=evaluate"),
])
def test_bad_lm_config_is_refused_before_any_data_or_model(tmp_path, args, expected):
    from finetune.errors import ConfigError
    from finetune.run import run

    cfg = compose_config(["task=tinyshakespeare", *TINY_FAST, "task.max_length=32", f"data_dir={tmp_path / 'nowhere'}", *args],
                         output_dir=tmp_path / "run")
    with pytest.raises(ConfigError) as err:
        run(cfg)
    assert expected in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("args, expected", [
    (["task.aux_lm_weight=-0.5"], ("config key 'task.aux_lm_weight' = -0.5: expected a number >= 0",)),
    (["task.max_length=300"], ("task.max_length=300", "context window (256 positions)")),
    (["task.local.document=column"], ("task.local.document='column' is not supported by format 'text'", "line or paragraph or file")),
    (["task.local.document=sentence"], ("task.local.document='sentence' is not supported by format 'text'",)),
])
def test_bad_lm_input_is_one_line_exit_2(tmp_path, args, expected):
    lm_fails(tmp_path, args, *expected)


def test_empty_or_whitespace_text_file(tmp_path):
    path = tmp_path / "data" / "text" / "tinyshakespeare_input.txt"
    for text in ("", " \n\t\n\n"):
        lm_fails(tmp_path, [], str(path), "empty or only whitespace", text=text)


def test_text_too_short_for_one_block_says_tokens_and_block_size(tmp_path, tiny_tokenizer):
    speeches = [f"{'ABC'[i % 3]}:\nhi." for i in range(20)]  # the last one is carved off for validation
    tokens = sum(len(tiny_tokenizer(s, add_special_tokens=False)["input_ids"]) + 1 for s in speeches[:19])
    assert tokens < 256
    lm_fails(tmp_path, ["task.max_length=256"], "tinyshakespeare_input.txt",
             f": {tokens} tokens (19 documents, one end-of-text token each) make no block of task.max_length=256 tokens",
             text="".join(s + "\n\n" for s in speeches))


def test_a_table_format_has_no_line_documents(tmp_path):
    write(tmp_path / "data" / "glue" / "SST-2" / "train.tsv", lines(SST2_HEADER, *SST2_TRAIN))
    write(tmp_path / "data" / "glue" / "SST-2" / "dev.tsv", lines(SST2_HEADER, *SST2_DEV))
    fails(tmp_path, ["task=sst2", f"data_dir={tmp_path / 'data'}", "task.local.document=line"],
          "task.local.document='line' is not supported by format 'tsv'", "choose column")


def test_sample_prompts_on_a_task_that_does_not_generate(tmp_path):
    write(tmp_path / "data" / "glue" / "SST-2" / "train.tsv", lines(SST2_HEADER, *SST2_TRAIN))
    write(tmp_path / "data" / "glue" / "SST-2" / "dev.tsv", lines(SST2_HEADER, *SST2_DEV))
    fails(tmp_path, ["task=sst2", f"data_dir={tmp_path / 'data'}", "+task.head_args.sample_prompts=[hello]"],
          "task.head_args.sample_prompts: text generation needs the 'lm' head", "task 'sst2' has head 'classification'")


def test_perplexity_from_a_classifier_export_is_refused(tmp_path):
    """A language-modelling task (perplexity, generation) needs an LM export, not a classifier's."""
    export = tmp_path / "sst2-model"
    write(export / "finetune.json", json.dumps({"task": "sst2", "head": "classification", "labels": ["negative", "positive"],
                                                "num_labels": 2, "head_args": {}, "max_length": 128}))
    write(export / "model.safetensors", "")
    lm_fails(tmp_path, ["mode=evaluate", "model.from_scratch=false", f"model.name_or_path={export}"],
             "is fine-tuned for task 'sst2' with a 'classification' head with labels negative, positive",
             "but task 'tinyshakespeare' has a 'lm' head (a language model)")


def test_wikitext_without_a_local_train_file_names_the_override(tmp_path):
    write(tmp_path / "data" / "text" / "wikitext-2" / "valid.txt", " = A = \n" + story(1) + "\n")
    fails(tmp_path, ["task=wikitext2", f"data_dir={tmp_path / 'data'}"],
          "local 'train' split not found", "train.txt", "task.local.splits.train=<file>")
