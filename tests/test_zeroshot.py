"""mode=zeroshot: the pretrained LM scored without training, with lm-evaluation-harness's conventions.

* Tokenization at the prompt/answer boundary (the real GPT-2 tokenizer): trailing whitespace of the
  prompt moves to the answer, the answer is the tail of the whole string's encoding, an empty prompt
  is end-of-text.
* Batched, length-sorted, padded scoring against a hand-computed log-likelihood (one unpadded
  forward per pair) on the tiny model; accuracy_norm divides by the answer's characters.
* Contextual calibration on a constructed case, K-shot prompt assembly, greedy generation.
* A run in this process and a 2-process `accelerate launch` give the same per-example scores, each
  example counted once (101 examples: not a multiple of 2 processes or of the batch).
* Bad inputs: one line, exit code 2.
* With ../shared: the mini model's SST-2 scores equal lm-evaluation-harness's (recorded from
  lm_eval 0.4.13's HFLM; benchmarks/compare_lm_eval.py re-measures them on 100+ examples per task).
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset

from conftest import MINI_MODEL, ROOT, SHARED_DATA, TINY_FAST, compose_config
from test_bad_inputs import assert_one_line_error, train_in_process
from test_distributed import _launch, needs_gloo

from finetune.data.prompts import Prompt
from finetune.errors import DataError
from finetune.models.heads import HEADS
from finetune.models.scoring import encode_pairs, greedy_until, loglikelihood
from finetune.modes.zeroshot import calibrated_predictions

GPT2_TOKENIZER = SHARED_DATA / "gpt2-tokenizer"
requires_gpt2_tokenizer = pytest.mark.skipif(not GPT2_TOKENIZER.is_dir(), reason="../shared/data/gpt2-tokenizer is not present")
QUICKSTART = ["experiment=quickstart", "mode=zeroshot", *TINY_FAST]


@pytest.fixture(scope="module")
def gpt2_tokenizer():
    from transformers import AutoTokenizer

    from finetune.data.formats import configure_tokenizer

    tokenizer = AutoTokenizer.from_pretrained(GPT2_TOKENIZER)
    configure_tokenizer(tokenizer, gpt1_tokens=False)
    return tokenizer


def ids_of(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


# ------------------------------------------------------------------ the prompt/answer boundary
@requires_gpt2_tokenizer
def test_trailing_space_of_the_prompt_moves_to_the_answer(gpt2_tokenizer):
    tok = gpt2_tokenizer
    (c1, a1), (c2, a2), (c3, a3), (c4, a4) = encode_pairs(
        tok, [("Answer:", " positive"), ("Answer: ", "positive"), ("Answer: ", " positive"), ("Answer:\n", "yes")])
    assert c1 == c2 == c3 == c4 == ids_of(tok, "Answer:") == [33706, 25]
    # Prompt "Answer:" + answer " positive", and prompt "Answer: " + answer "positive": the same tokens.
    assert a1 == a2 == ids_of(tok, " positive") == [3967]
    # A trailing space AND a leading one: both spaces are the answer's ("Ġ", "Ġpositive").
    assert a3 == [220, 3967] == ids_of(tok, "Answer:  positive")[2:]
    assert a4 == ids_of(tok, "\nyes")  # any trailing whitespace moves, newlines too


@requires_gpt2_tokenizer
def test_answer_is_the_tail_of_the_whole_encoding_and_an_empty_prompt_is_end_of_text(gpt2_tokenizer):
    tok = gpt2_tokenizer
    # "The cat" + "s are" encodes as The|Ġcats|Ġare, the prompt alone as The|Ġcat: the answer's tokens
    # are what lies beyond the prompt's token count, [Ġare] (the harness's rule, not a separate encoding).
    ((context, answer),) = encode_pairs(tok, [("The cat", "s are")])
    assert ids_of(tok, "The cats are") == [464, 11875, 389] and context == [464, 3797] and answer == [389]
    eot = tok.eos_token_id
    assert encode_pairs(tok, [("", " hello")]) == [([eot], ids_of(tok, " hello"))]
    assert encode_pairs(tok, [("", "<|endoftext|> hello")]) == [([eot], ids_of(tok, " hello"))]
    with pytest.raises(DataError, match="adds no token of its own"):
        encode_pairs(tok, [("hel", "lo")])  # "hello" is one token: nothing would be scored


# ------------------------------------------------------------------ scores against a hand computation
@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from finetune.data.formats import configure_tokenizer

    tokenizer = AutoTokenizer.from_pretrained(ROOT / "data" / "tiny-tokenizer")
    configure_tokenizer(tokenizer, gpt1_tokens=False)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_layer=2, n_embd=64, n_head=2, n_positions=48,
                        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
    return GPT2LMHeadModel(config).eval(), tokenizer


def by_hand(model, context_ids: list[int], answer_ids: list[int]) -> tuple[float, bool]:
    """One unpadded forward of the whole sequence (cut to the window from the left), summed over the answer."""
    window = model.config.n_positions
    whole = (context_ids + answer_ids)[-(window + 1):]
    with torch.no_grad():
        logprobs = model(torch.tensor([whole[:-1]])).logits.float().log_softmax(-1)[0]
    first = len(whole) - 1 - len(answer_ids)  # the position that predicts the answer's first token
    total, greedy = 0.0, True
    for k, token in enumerate(answer_ids):
        total += logprobs[first + k, token].item()
        greedy &= int(logprobs[first + k].argmax()) == token
    return total, greedy


def test_batched_scores_equal_the_hand_computed_log_likelihood(tiny_lm):
    model, tok = tiny_lm
    long_prompt = " ".join(["this movie is great"] * 30)  # longer than the 48-token window: cut from the left
    pairs = [("this movie is", " great"), ("this movie is", " not great at all"), ("a", " b"),
             ("this movie is", " great"), (long_prompt, " yes"), ("", " hello there"), ("it was", " bad")]
    results = loglikelihood(model, tok, pairs, batch_size=3)  # 3 batches, padded rows, one duplicate pair
    assert len(results) == len(pairs)
    for (score, greedy), (context_ids, answer_ids) in zip(results, encode_pairs(tok, pairs)):
        expected, expected_greedy = by_hand(model, context_ids, answer_ids)
        assert score == pytest.approx(expected, abs=1e-4) and greedy == expected_greedy
    assert results[0] == results[3]
    # is_greedy on a continuation that is the model's own argmax token.
    context_ids = ids_of(tok, "this movie is")
    with torch.no_grad():
        best = int(model(torch.tensor([context_ids])).logits[0, -1].argmax())
    text = tok.decode([best])
    ((_, answer_ids),) = encode_pairs(tok, [("this movie is", text)])
    if answer_ids == [best]:  # the decoded token re-encodes to itself (almost always)
        assert loglikelihood(model, tok, [("this movie is", text)], batch_size=1)[0][1] is True


def test_greedy_generation_in_batches_equals_one_prompt_at_a_time(tiny_lm):
    model, tok = tiny_lm
    prompts = ["this movie is", "a", "it was a great film and"]
    batched = greedy_until(model, tok, prompts, max_new_tokens=5, stop=[], batch_size=3)
    for prompt, text in zip(prompts, batched):
        ids = ids_of(tok, prompt)
        with torch.no_grad():
            for _ in range(5):  # greedy by hand
                ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
        new = ids[len(ids_of(tok, prompt)):]
        if tok.eos_token_id in new:
            new = new[:new.index(tok.eos_token_id)]
        assert text == tok.decode(new, skip_special_tokens=True)
    cut = greedy_until(model, tok, prompts, max_new_tokens=5, stop=[batched[0][1:3]], batch_size=2)
    assert cut[0] == batched[0].split(batched[0][1:3])[0]


def test_contextual_calibration_on_a_constructed_case():
    # The uncalibrated model answers class 0 for every input; on the content-free prompt it gives
    # class 0 probability 0.8. Dividing by (0.8, 0.2): (0.7/0.8, 0.3/0.2) -> 1, (0.6/0.8, 0.4/0.2) -> 1,
    # (0.9/0.8, 0.1/0.2) -> 0.
    scores = np.log([[0.7, 0.3], [0.6, 0.4], [0.9, 0.1]])
    content_free = np.log([[0.8, 0.2]] * 3)
    assert np.argmax(scores, -1).tolist() == [0, 0, 0]
    assert calibrated_predictions(scores, content_free).tolist() == [1, 1, 0]
    # Unnormalised log-likelihoods (what scoring returns) give the same predictions.
    assert calibrated_predictions(scores - 3.0, content_free - 7.5).tolist() == [1, 1, 0]


# ------------------------------------------------------------------ prompts
def test_k_shot_prompt_is_the_same_seeded_demonstrations_before_every_prompt():
    cfg = compose_config([*QUICKSTART, "task.prompt.shots=2", "task.prompt.choices={negative: bad, positive: good}"])
    cfg.task.prompt.template = "{text}\nQ: tone?\nA:"
    prompt = Prompt(cfg.task, HEADS["classification"], ["text", "label"])
    train = Dataset.from_dict({"text": ["one", "two", "three", "four", "five"], "label": [0, 1, 1, 0, 1]})
    prefix, shown = prompt.demonstrations(train, seed=11, where="train.tsv")
    assert shown == random.Random(11).sample(range(5), 2)
    answers = ["bad", "good"]
    assert prefix == "".join(f"{train[i]['text']}\nQ: tone?\nA: {answers[train[i]['label']]}\n\n" for i in shown)
    assert prompt.demonstrations(train, seed=11, where="train.tsv") == (prefix, shown)
    assert prefix + prompt.text({"text": "six"}, "dev row 1") == prefix + "six\nQ: tone?\nA:"
    with pytest.raises(DataError, match=r"task.prompt.shots=2 but the train split \(t.tsv\) has 1 rows"):
        prompt.demonstrations(train.select([0]), seed=11, where="t.tsv")


def test_placeholders_filters_candidates_and_content_free_text():
    cfg = compose_config(["task=mnli", "mode=zeroshot"])
    mnli = Prompt(cfg.task, HEADS["entailment"], ["text", "text_pair", "label"])
    assert mnli.text({"text": "A man sleeps.", "text_pair": " He is awake "}, "row 1") == \
        "A man sleeps.\nQuestion: He is awake. True, False or Neither?\nAnswer:"
    assert mnli.answers({}) == ["True", "Neither", "False"]
    assert mnli.text({"text": "x", "text_pair": "y"}, "row 1", content_free=True) == \
        "N/A\nQuestion: N/A. True, False or Neither?\nAnswer:"
    cfg = compose_config(["task=commonsenseqa", "mode=zeroshot"])
    csqa = Prompt(cfg.task, HEADS["multiple_choice"], ["context", "choices", "label"])
    row = {"context": " Where is it? ", "choices": ["a", "b", "c", "d", "e"], "label": 2}
    assert csqa.text(row, "row 1") == "Question: Where is it?\nA. a\nB. b\nC. c\nD. d\nE. e\nAnswer:"
    assert csqa.answers(row) == list("ABCDE") and csqa.gold_answer(row, "row 1") == "C"
    with pytest.raises(DataError, match="needs candidate 5, but the row has 4"):
        csqa.text({**row, "choices": ["a", "b", "c", "d"]}, "dev.jsonl row 7")


def test_zeroshot_is_a_mode_and_experiment_glue_sweeps_the_glue_tasks():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from conftest import CONFIG_DIR
    from finetune.modes import MODES

    assert set(MODES) == {p.stem for p in (CONFIG_DIR / "mode").glob("*.yaml")} and "zeroshot" in MODES
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["experiment=glue", "mode=zeroshot"], return_hydra_config=True)
    GlobalHydra.instance().clear()
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN" and cfg.mode.name == "zeroshot"
    tasks = cfg.hydra.sweeper.params.task.split(",")
    assert tasks == ["cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli"]
    assert cfg.hydra.sweeper.params.seed == "1,2,3"
    # Every GLUE task but STS-B (regression) ships a prompt.
    for task in tasks:
        assert bool(compose_config([f"task={task}"]).task.prompt.template) == (task != "stsb")


# ------------------------------------------------------------------ whole runs
def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# One run shared by the hand computation and the 2-process comparison: 101 examples (odd: not a multiple
# of 2 processes or of the batch of 8), answers of different lengths (accuracy_norm differs from
# accuracy), contextual calibration on.
TINY_RUN = [*QUICKSTART, "trainer.max_eval_samples=101", "trainer.eval_batch_size=8",
            "task.prompt.choices={negative: bad, positive: very good}", "task.prompt.calibration=contextual"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("zeroshot") / "one"
    result = train_in_process(TINY_RUN, run_dir)
    assert result.code in (0, None), result.stderr[-3000:]
    return run_dir


def test_run_writes_metrics_and_every_candidate_score_as_computed_by_hand(tiny_run):
    """The tiny model of the run, rebuilt from the same seed, scores (prompt, answer) pairs by hand:
    the sum, the per-character score and the three predictions match the predictions file; the
    metrics are the accuracies of the file's predictions."""
    from transformers import set_seed

    from finetune.hub import set_offline_mode
    from finetune.models.backbone import load_causal_lm, load_tokenizer

    metrics = json.loads((tiny_run / "metrics.json").read_text())
    lines = read_lines(tiny_run / "predictions" / "validation.jsonl")
    assert metrics["mode"] == "zeroshot" and metrics["eval"]["num_examples"] == len(lines) == 101
    assert set(metrics["eval"]) == {"accuracy", "f1", "accuracy_norm", "accuracy_calibrated", "f1_calibrated", "num_examples"}
    assert "tokens/s" in (tiny_run / "train.log").read_text()

    cfg = compose_config(TINY_RUN)
    tokenizer, base_vocab = load_tokenizer(cfg.model, set_offline_mode(True))
    set_seed(cfg.seed)
    model = load_causal_lm(cfg.model, tokenizer, base_vocab, offline=True)
    labels, answers = ["negative", "positive"], ["bad", "very good"]
    neutral_prompt = "N/A\nQuestion: Is this sentence positive or negative?\nAnswer:"
    for line in lines[:24]:  # by hand: 4 unbatched forwards per example
        sums, neutral = [], []
        for candidate, answer in zip(line["candidates"], answers):
            (c, a), (nc, na) = encode_pairs(tokenizer, [(line["prompt"], " " + answer), (neutral_prompt, " " + answer)])
            expected, greedy = by_hand(model, c, a)
            assert candidate["loglikelihood"] == pytest.approx(expected, abs=1e-4) and candidate["is_greedy"] == greedy
            assert candidate["loglikelihood_per_char"] == pytest.approx(expected / len(answer), abs=1e-4)
            assert candidate["content_free_loglikelihood"] == pytest.approx(by_hand(model, nc, na)[0], abs=1e-4)
            sums.append(expected)
            neutral.append(candidate["content_free_loglikelihood"])
        assert line["prediction"] == labels[int(np.argmax(sums))]
        assert line["prediction_norm"] == labels[int(np.argmax(np.array(sums) / [len(a) for a in answers]))]
        assert line["prediction_calibrated"] == labels[int(np.argmax(np.array(sums) - neutral))]
    for key, metric in (("prediction", "accuracy"), ("prediction_norm", "accuracy_norm"), ("prediction_calibrated", "accuracy_calibrated")):
        assert metrics["eval"][metric] == pytest.approx(np.mean([line[key] == line["label"] for line in lines]))
    # The content-free prompt is the same for every row: scored once per answer.
    assert metrics["scoring"]["requests"] == 4 * 101 and metrics["scoring"]["scored"] <= 2 * 101 + 2


def test_k_shot_run_puts_the_same_demonstrations_before_every_example(tmp_path):
    result = train_in_process([*QUICKSTART, "trainer.max_eval_samples=6", "task.prompt.shots=3", "seed=5"], tmp_path / "run")
    assert result.code in (0, None), result.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    shown = metrics["prompt"]["demonstration_indices"]
    assert metrics["prompt"]["shots"] == 3 and metrics["prompt"]["shot_seed"] == 5 and len(shown) == 3
    train = (ROOT / "data" / "quickstart" / "train.tsv").read_text().splitlines()[1:]
    # Demonstrations come from the train split after trainer.max_train_samples (none here): row i = line i + 2.
    assert shown == random.Random(5).sample(range(len(train)), 3)
    log = (tmp_path / "run" / "train.log").read_text()
    first = train[shown[0]].split("\t")
    assert repr(f"{first[0]}\nQuestion: Is this sentence positive or negative?\nAnswer: {first[1]}\n\n")[1:-1] in log


def test_span_qa_generates_answers_and_scores_exact_match(tmp_path):
    squad = {"version": "1.1", "data": [{"title": "t", "paragraphs": [{"context": "The cat sat on the mat. It was red.", "qas": [
        {"id": "q1", "question": "Where did the cat sit?", "answers": [{"text": "on the mat", "answer_start": 12}]},
        {"id": "q2", "question": "What colour?", "answers": [{"text": "red", "answer_start": 31}]},
        {"id": "q3", "question": "Who sat?", "answers": [{"text": "The cat", "answer_start": 0}]}]}]}]}
    data = tmp_path / "data" / "squad"
    data.mkdir(parents=True)
    for name in ("train-v1.1.subset-44-articles.json", "dev-v1.1.part1-of-2.json", "dev-v1.1.part2-of-2.json"):
        (data / name).write_text(json.dumps(squad))
    args = ["task=squad", "mode=zeroshot", *TINY_FAST, f"data_dir={tmp_path / 'data'}", "task.prompt.max_new_tokens=4",
            "task.prompt.shots=1"]
    result = train_in_process(args, tmp_path / "run")
    assert result.code in (0, None), result.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    lines = read_lines(tmp_path / "run" / "predictions" / "validation.jsonl")
    assert set(metrics["eval"]) == {"exact_match", "f1", "num_examples"} and metrics["eval"]["num_examples"] == 6
    assert [line["id"] for line in lines] == ["q1", "q2", "q3"] * 2
    assert lines[0]["prompt"] == "The cat sat on the mat. It was red.\n\nQuestion: Where did the cat sit?\nAnswer:"
    assert all("\n" not in line["prediction"] and line["prediction"] == line["generated"].strip() for line in lines)


@pytest.mark.slow
@needs_gloo
def test_two_processes_count_every_example_once(tiny_run, tmp_path):
    """The same run under a 2-process launch: the same per-example scores, each example counted once."""
    _launch([*TINY_RUN, f"hydra.run.dir={tmp_path / 'two'}"], tmp_path, processes=2)
    m1, m2 = (json.loads((d / "metrics.json").read_text()) for d in (tiny_run, tmp_path / "two"))
    assert m1["eval"]["num_examples"] == m2["eval"]["num_examples"] == 101
    for key in ("accuracy", "accuracy_norm", "accuracy_calibrated", "f1"):
        assert m2["eval"][key] == pytest.approx(m1["eval"][key], abs=1e-12)
    assert m2["scoring"]["scored"] == m1["scoring"]["scored"] and m2["scoring"]["tokens"] == m1["scoring"]["tokens"]
    l1, l2 = (read_lines(d / "predictions" / "validation.jsonl") for d in (tiny_run, tmp_path / "two"))
    assert [x["index"] for x in l2] == list(range(101))
    worst = max(abs(a["loglikelihood"] - b["loglikelihood"]) for x, y in zip(l1, l2) for a, b in zip(x["candidates"], y["candidates"]))
    assert worst < 1e-4


# ------------------------------------------------------------------ bad inputs: one line, exit 2
@pytest.fixture(scope="module")
def classifier_export(tmp_path_factory):
    """A fine-tuned classifier's model/ directory (GPT2ForSequenceClassification + finetune.json)."""
    from transformers import AutoTokenizer, GPT2Config, GPT2Model

    from finetune.models.artifacts import export
    from finetune.models.task_model import TaskModel, build_head

    path = tmp_path_factory.mktemp("classifier") / "model"
    cfg = compose_config(["experiment=quickstart"])
    tokenizer = AutoTokenizer.from_pretrained(ROOT / "data" / "tiny-tokenizer")
    tokenizer.pad_token = tokenizer.eos_token
    backbone = GPT2Model(GPT2Config(vocab_size=len(tokenizer), n_layer=1, n_embd=16, n_head=2, n_positions=64))
    export(TaskModel(backbone, build_head("classification", 16, 2, 0.0, {})), tokenizer, cfg.task, ["negative", "positive"], path)
    return path


@pytest.fixture(scope="module")
def untied_backbone(tmp_path_factory):
    from transformers import GPT2Config, GPT2Model

    path = tmp_path_factory.mktemp("untied")
    GPT2Model(GPT2Config(vocab_size=4000, n_layer=1, n_embd=16, n_head=2, n_positions=64, tie_word_embeddings=False)).save_pretrained(path)
    return path


# The list, through the command line: one `error:` line, exit code 2, before any scoring.
BAD = {
    "no_prompt": (["task=stsb", "mode=zeroshot", *TINY_FAST], ["task 'stsb' has no prompt", "task.prompt.template", "regression"]),
    "unknown_placeholder": ([*QUICKSTART, "task.prompt.template='{sentence} is'"], ["placeholder {sentence}", "its roles are {text}"]),
    "label_not_in_labels": ([*QUICKSTART, "+task.prompt.choices.great=good"], ["'great' is not a label", "negative, positive"]),
    "label_missing": ([*QUICKSTART, "~task.prompt.choices.positive"], ["no answer for label(s) positive"]),
    "empty_answer": ([*QUICKSTART, "task.prompt.choices={negative: '', positive: good}"], ["task.prompt.choices.negative", "non-empty"]),
    "shots_over_train_size": ([*QUICKSTART, "task.prompt.shots=50", "trainer.max_train_samples=10"],
                              ["task.prompt.shots=50", "has 10 rows"]),
    "span_without_question": (["task=squad", "mode=zeroshot", *TINY_FAST, "task.prompt.template='{context} Answer:'"],
                              ["must contain {context} and {question}", "no {question}"]),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_prompt_inputs_fail_in_one_line(tmp_path, case):
    args, expected = BAD[case]
    assert_one_line_error(train_in_process(args, tmp_path / "run"), *expected)


# More checks of the prompt section, on the composed config (the same ConfigError reaches the CLI as above).
PROMPT_ERRORS = {
    "regression_with_prompt": (["task=stsb", "task.prompt.template='{text} / {text_pair}'"], "regression task"),
    "bad_filter": (["experiment=quickstart", "task.prompt.template='{text|upper}'"], "unknown filter 'upper'; filters are strip, period"),
    "format_spec": (["experiment=quickstart", "task.prompt.template='{text:>9}'"], "is not of the form {role}"),
    "unbalanced_brace": (["experiment=quickstart", "task.prompt.template='{text'"], "write {{ and }} for literal braces"),
    "whole_candidate_list": (["task=storycloze", "data_dir=data", "task.prompt.template='{choices}'"], "name one of them, e.g. {choices[0]}"),
    "boolean_answer": (["experiment=quickstart", "task.prompt.choices.positive=true"], "YAML boolean"),
    "span_choices": (["task=squad", "+task.prompt.choices={a: b}"], "span QA generates its answer; remove choices"),
    "span_calibration": (["task=squad", "task.prompt.calibration=contextual"], "span QA generates its answer (use none)"),
}


@pytest.mark.parametrize("case", sorted(PROMPT_ERRORS))
def test_prompt_section_errors_name_the_key(case):
    from finetune.errors import ConfigError
    from finetune.modes.zeroshot import check_prompt

    overrides, expected = PROMPT_ERRORS[case]
    with pytest.raises(ConfigError, match=re.escape(expected)):
        check_prompt(compose_config([*overrides, "mode=zeroshot"]))


@pytest.mark.parametrize("override, expected", [("task.prompt.shots=-1", "an integer >= 0"),
                                                ("task.prompt.calibration=domain", "none or contextual"),
                                                ("task.prompt.max_new_tokens=0", "an integer >= 1"),
                                                ("model.gpt1_tokens=true", "false in mode=zeroshot")])
def test_prompt_ranges_are_validated_with_the_config(override, expected):
    from finetune.errors import ConfigError
    from finetune.run import check

    with pytest.raises(ConfigError, match=re.escape(expected)):
        check(compose_config([*QUICKSTART, override]))


def test_language_model_sources(tmp_path):
    """A language-modelling run's model/ (GPT2LMHeadModel + finetune.json head lm) loads; a Hub id offline is one line."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from finetune.errors import HubUnavailableError
    from finetune.models.backbone import load_causal_lm, load_tokenizer

    cfg = compose_config([*QUICKSTART, "model.from_scratch=false", f"model.name_or_path={tmp_path / 'lm'}"])
    tokenizer, base_vocab = load_tokenizer(cfg.model, offline=True)
    GPT2LMHeadModel(GPT2Config(vocab_size=base_vocab, n_layer=1, n_embd=16, n_head=2, n_positions=64)).save_pretrained(tmp_path / "lm")
    (tmp_path / "lm" / "finetune.json").write_text(json.dumps({"task": "wikitext", "head": "lm", "labels": None}))
    model = load_causal_lm(cfg.model, tokenizer, base_vocab, offline=True)
    assert type(model).__name__ == "GPT2LMHeadModel" and model.config.n_layer == 1
    cfg = compose_config([*QUICKSTART, "model.from_scratch=false", "model.name_or_path=gpt2"])
    with pytest.raises(HubUnavailableError, match="set model.name_or_path=<local save_pretrained directory>"):
        load_causal_lm(cfg.model, tokenizer, base_vocab, offline=True)


def test_a_fine_tuned_classifier_has_no_language_model_head(tmp_path, classifier_export, untied_backbone):
    base = [*QUICKSTART, "model.from_scratch=false", "trainer.max_eval_samples=4"]
    assert_one_line_error(train_in_process([*base, f"model.name_or_path={classifier_export}"], tmp_path / "a"),
                          "fine-tuned with a 'classification' head", "language-modelling head", "mode=zeroshot")
    assert_one_line_error(train_in_process([*base, f"model.name_or_path={untied_backbone}"], tmp_path / "b"),
                          "lacks weights of a causal language model (lm_head.weight)")


# ------------------------------------------------------------------ the harness's own numbers (mini model)
# Recorded with lm_eval 0.4.13: HFLM(pretrained=gpt2-mini-pretrained, batch_size=8) running its glue/sst2
# task on the first 5 rows of ../shared/data/glue/SST-2/dev.tsv (benchmarks/compare_lm_eval.py's
# harness_samples): the log-likelihoods of " negative" and " positive" per example.
HARNESS_SST2 = [[-13.061308860778809, -12.916464805603027], [-12.301262855529785, -12.12138557434082],
                [-13.170029640197754, -13.021512985229492], [-12.771484375, -12.212261199951172],
                [-13.0741605758667, -12.999124526977539]]


@pytest.mark.skipif(not MINI_MODEL.is_dir() or not (SHARED_DATA / "glue" / "SST-2").is_dir(), reason="needs ../shared/data")
def test_mini_model_sst2_scores_equal_the_harness(tmp_path):
    result = train_in_process(["task=sst2", "mode=zeroshot", f"data_dir={SHARED_DATA}", f"model.name_or_path={MINI_MODEL}",
                               "trainer.max_eval_samples=5", "trainer.progress_bar=false", "trainer.tracker=null"], tmp_path / "run")
    assert result.code in (0, None), result.stderr[-3000:]
    lines = read_lines(tmp_path / "run" / "predictions" / "validation.jsonl")
    scores = [[c["loglikelihood"] for c in line["candidates"]] for line in lines]
    assert np.abs(np.array(scores) - np.array(HARNESS_SST2)).max() < 1e-4
