"""Span QA (SQuAD v1.1): context windows, answer positions, answers recovered from scores; EM/F1.

Hand-made examples with a small `task.max_length` and stride, so one context is cut into several
overlapping windows. Runs with the project's tiny tokenizer and, when ../shared/data is present,
with the real GPT-2 tokenizer.
"""

from __future__ import annotations

import numpy as np
import pytest
from datasets import Dataset
from transformers import AutoTokenizer

from conftest import ROOT, SHARED_DATA
from finetune.data.collate import SpanCollator
from finetune.data.formats import configure_tokenizer
from finetune.data.span import finalize, postprocess, span_args, span_features
from finetune.errors import DataError
from finetune.metrics import load_metric

GPT2_TOKENIZER = SHARED_DATA / "gpt2-tokenizer"

CONTEXT = (
    "Alice was born in Paris in 1950. She moved to Berlin in 1975 and worked as a painter there. "
    "Later she lived in Rome with her brother Tom until 2001."
)

# One question for every example, so that all examples are cut into the same windows.
QUESTION = "What then?"

# Per tokenizer: window size, stride, and answers (chosen by looking at the windows, asserted
# below) that lie in the overlap of two windows / start in one window and are whole only in the next.
SETTINGS = {
    "tiny": dict(path=ROOT / "data" / "tiny-tokenizer", max_length=24, stride=6, in_overlap="in 1975", split="1975 and worked"),
    "gpt2": dict(path=GPT2_TOKENIZER, max_length=14, stride=4, in_overlap="She moved", split="worked as a painter"),
}


@pytest.fixture(
    scope="module",
    params=[
        "tiny",
        pytest.param("gpt2", marks=pytest.mark.skipif(not GPT2_TOKENIZER.is_dir(), reason="../shared/data/gpt2-tokenizer is not present")),
    ],
)
def setting(request):
    s = dict(SETTINGS[request.param], name=request.param)
    tokenizer = AutoTokenizer.from_pretrained(s["path"])
    configure_tokenizer(tokenizer, gpt1_tokens=False)
    s["tokenizer"] = tokenizer
    return s


def example(qid: str, question: str, answer: str, context: str = CONTEXT, extra_answers=()) -> dict:
    start = context.index(answer)
    texts = [answer, *extra_answers]
    return {
        "id": qid, "question": question, "context": context,
        "answers": {"text": texts, "answer_start": [start] + [context.find(t) for t in extra_answers]},
    }


def batch_of(examples: list[dict]) -> dict:
    return {key: [e[key] for e in examples] for key in examples[0]}


def questions(setting) -> list[dict]:
    return [
        example("q-start", QUESTION, "Alice"),
        example("q-overlap", QUESTION, setting["in_overlap"]),
        example("q-split", QUESTION, setting["split"]),
        example("q-brother", QUESTION, "Tom"),
        example("q-end", QUESTION, "2001"),
    ]


def windows(setting, examples, training=False, **args):
    args = {"stride": setting["stride"], **args}
    return span_features(batch_of(examples), setting["tokenizer"], setting["max_length"], args, training)


def window_span(offsets) -> tuple[int, int]:
    """Character range of a window's context tokens."""
    context = [o for o in offsets if o is not None]
    return context[0][0], context[-1][1]


def whole_in(offsets, start: int, end: int) -> bool:
    first, last = window_span(offsets)
    return first <= start and end <= last


# ---------------------------------------------------------------------------------------------
# Windows


def test_long_context_is_cut_into_overlapping_windows(setting):
    ex = example("q", "Where?", "Paris")
    out = windows(setting, [ex])
    tokenizer, max_length, stride = setting["tokenizer"], setting["max_length"], setting["stride"]
    assert len(out["input_ids"]) >= 3
    assert all(len(ids) <= max_length for ids in out["input_ids"])
    assert all(len(ids) == max_length for ids in out["input_ids"][:-1])
    assert out["example_id"] == ["q"] * len(out["input_ids"])
    question = tokenizer("Where?", add_special_tokens=False)["input_ids"]
    covered = []
    for ids, offsets in zip(out["input_ids"], out["offset_mapping"]):
        # `question delim context`: the question tokens, GPT-2's delimiter, then context tokens only.
        assert ids[: len(question) + 1] == question + [tokenizer.eos_token_id]
        assert offsets[: len(question) + 1] == [None] * (len(question) + 1)
        assert all(o is not None for o in offsets[len(question) + 1 :])
        covered.append([tuple(o) for o in offsets[len(question) + 1 :]])
    # Consecutive windows share exactly `stride` context tokens, and together cover the context.
    for previous, current in zip(covered, covered[1:]):
        assert previous[-stride:] == current[:stride]
    assert covered[0][0][0] == 0 and covered[-1][-1][1] == len(CONTEXT)
    assert out["truncated"] == [False] * len(covered)


def test_tiny_tokenizer_windows_by_hand():
    """24-token windows, 6 tokens shared: 3 question tokens, the delimiter, then context."""
    tokenizer = AutoTokenizer.from_pretrained(ROOT / "data" / "tiny-tokenizer")
    configure_tokenizer(tokenizer, gpt1_tokens=False)
    out = span_features(batch_of([example("q", QUESTION, "Paris")]), tokenizer, 24, {"stride": 6}, False)
    assert [CONTEXT[slice(*window_span(o))] for o in out["offset_mapping"]] == [
        "Alice was born in Paris in 19",
        "aris in 1950. She moved to",
        "he moved to Berlin in 1975",
        " in 1975 and worked as a",
        "ked as a painter there. L",
        "er there. Later she lived in",
        " lived in Rome with her",
        " with her brother Tom un",
        "Tom until 2001.",
    ]
    # So "in 1975" is whole in windows 2 and 3, and "1975 and worked" starts in window 2 but is
    # whole only in window 3.


def test_answer_placement_preconditions(setting):
    """The chosen answers really lie in an overlap / across a window boundary for this tokenizer."""
    out = windows(setting, [example("q", QUESTION, "Paris")])
    offsets = out["offset_mapping"]
    a = CONTEXT.index(setting["in_overlap"])
    assert sum(whole_in(o, a, a + len(setting["in_overlap"])) for o in offsets) >= 2
    s = CONTEXT.index(setting["split"])
    e = s + len(setting["split"])
    first_start = next(i for i, o in enumerate(offsets) if window_span(o)[0] <= s < window_span(o)[1])
    assert not whole_in(offsets[first_start], s, e)  # cut at the end of the window its start is in
    assert whole_in(offsets[first_start + 1], s, e)  # whole only in the next one


def test_training_positions_map_back_to_the_answer_and_windows_without_it_are_dropped(setting):
    examples = questions(setting)
    train = windows(setting, examples, training=True)
    evaluation = windows(setting, examples, training=False)  # same windows, with their offsets
    assert len(train["input_ids"]) == len(evaluation["input_ids"])
    assert train["input_ids"] == evaluation["input_ids"]
    by_id = {e["id"]: e for e in examples}
    kept = {e["id"]: 0 for e in examples}
    for i, qid in enumerate(evaluation["example_id"]):
        ex, offsets = by_id[qid], evaluation["offset_mapping"][i]
        answer = ex["answers"]["text"][0]
        start_char = ex["answers"]["answer_start"][0]
        contains = whole_in(offsets, start_char, start_char + len(answer))
        assert train["drop"][i] is (not contains), (qid, i)
        if contains:
            kept[qid] += 1
            s, e = train["start_positions"][i], train["end_positions"][i]
            assert offsets[s] is not None and offsets[e] is not None and s <= e
            assert CONTEXT[offsets[s][0] : offsets[e][1]].strip() == answer
            # the tightest span: neither end token can be dropped
            assert CONTEXT[offsets[s][1] : offsets[e][1]].strip() != answer
            assert CONTEXT[offsets[s][0] : offsets[e][0]].strip() != answer
        else:
            assert (train["start_positions"][i], train["end_positions"][i]) == (0, 0)
    assert all(count >= 1 for count in kept.values())
    assert kept["q-split"] >= 1 and kept["q-overlap"] >= 2


def test_finalize_drops_and_counts_windows_without_the_answer(setting):
    examples = questions(setting)
    rows = Dataset.from_list(examples)
    kwargs = {"tokenizer": setting["tokenizer"], "max_length": setting["max_length"], "args": {"stride": setting["stride"]}}
    features = rows.map(span_features, batched=True, remove_columns=rows.column_names, fn_kwargs={**kwargs, "training": True})
    expected_dropped = sum(features["drop"])
    assert 0 < expected_dropped < len(features)
    kept, dropped = finalize(features, rows, True, "train.json")
    assert dropped == expected_dropped and len(kept) == len(features) - dropped
    assert "drop" not in kept.column_names
    # Every example with no window holding its answer makes the split fail loudly.
    bad = Dataset.from_list([{**examples[0], "answers": {"text": ["Alice"], "answer_start": [len(CONTEXT) + 5]}}])
    bad_features = bad.map(span_features, batched=True, remove_columns=bad.column_names, fn_kwargs={**kwargs, "training": True})
    with pytest.raises(DataError, match="no training window contains its answer"):
        finalize(bad_features, bad, True, "train.json")


def test_training_needs_an_answer(setting):
    ex = {**example("q", "Where?", "Paris"), "answers": {"text": [], "answer_start": []}}
    with pytest.raises(DataError, match="question id 'q': no answer"):
        windows(setting, [ex], training=True)


def test_long_question_is_cut_and_counted_once_per_example(setting):
    tokenizer = setting["tokenizer"]
    long_question = "Which city did the painter who was born in Paris move to after she left home in the fifties?"
    out = windows(setting, [example("q1", long_question, "Berlin"), example("q2", "Who?", "Tom")])
    assert sum(out["truncated"]) == 1
    assert out["truncated"][0] is True and out["example_id"][0] == "q1"
    budget = (setting["max_length"] - tokenizer.num_special_tokens_to_add(pair=True) - setting["stride"]) // 2
    for ids, offsets, qid in zip(out["input_ids"], out["offset_mapping"], out["example_id"]):
        question_tokens = offsets.index(next(o for o in offsets if o is not None)) - 1
        assert question_tokens <= budget
        if qid == "q1":
            assert long_question.startswith(tokenizer.decode(ids[:question_tokens]))


def test_span_args_defaults_and_checks():
    assert span_args({}) == {"stride": 128, "max_answer_length": 30, "n_best": 20}
    with pytest.raises(DataError, match="unknown key"):
        span_args({"strides": 3})
    with pytest.raises(DataError, match="max_answer_length"):
        span_args({"max_answer_length": 0})


def test_stride_too_large_for_the_window_is_a_data_error(setting):
    with pytest.raises(DataError, match="stride"):
        windows(setting, [example("q", "Where?", "Paris")], stride=setting["max_length"])


def test_span_collator_pads_windows_and_carries_labels_or_feature_index(setting):
    tokenizer = setting["tokenizer"]
    examples = questions(setting)
    train = windows(setting, examples, training=True)
    rows = [
        {"input_ids": i, "attention_mask": m, "start_positions": s, "end_positions": e}
        for i, m, s, e, d in zip(train["input_ids"], train["attention_mask"], train["start_positions"], train["end_positions"], train["drop"])
        if not d
    ]
    batch = SpanCollator(tokenizer, pad_to_multiple_of=8)(rows)
    assert batch["input_ids"].shape[1] % 8 == 0
    assert batch["labels"].tolist() == [[r["start_positions"], r["end_positions"]] for r in rows]
    batch = SpanCollator(tokenizer)([{"input_ids": [5, 6, 7], "attention_mask": [1, 1, 1], "feature_index": 4},
                                     {"input_ids": [5], "attention_mask": [1], "feature_index": 0}])
    assert batch["feature_index"].tolist() == [4, 0] and "labels" not in batch
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


# ---------------------------------------------------------------------------------------------
# Evaluation: scores -> answer strings


def peaked_logits(offsets, start_char: int, end_char: int, rng, width: int):
    """A model that knows the answer: +10 on the token holding its first / last character, noise
    elsewhere, very high scores on question and template tokens (which must be ignored), and the
    float32 minimum on the padding after the window (as evaluate_spans pads them)."""
    start = rng.normal(0, 0.1, width)
    end = rng.normal(0, 0.1, width)
    for j, o in enumerate(offsets):
        if o is None:
            start[j] = end[j] = 50.0
            continue
        if o[0] <= start_char < o[1]:
            start[j] += 10
        if o[0] < end_char <= o[1]:
            end[j] += 10
    start[len(offsets) :] = end[len(offsets) :] = np.finfo(np.float32).min
    return start, end


def test_postprocess_recovers_the_exact_gold_answers_across_windows(setting):
    examples = questions(setting)
    rows = Dataset.from_list(examples)
    features = rows.map(
        span_features, batched=True, remove_columns=rows.column_names,
        fn_kwargs={"tokenizer": setting["tokenizer"], "max_length": setting["max_length"],
                   "args": {"stride": setting["stride"]}, "training": False},
    )
    features, _ = finalize(features, rows, False, "dev.json")
    assert features["feature_index"] == list(range(len(features)))
    by_id = {e["id"]: e for e in examples}
    rng = np.random.default_rng(0)
    width = setting["max_length"] + 8
    starts, ends = [], []
    for qid, offsets in zip(features["example_id"], features["offset_mapping"]):
        answer = by_id[qid]["answers"]
        s = answer["answer_start"][0]
        start, end = peaked_logits(offsets, s, s + len(answer["text"][0]), rng, width)
        starts.append(start)
        ends.append(end)
    answers = postprocess(rows["id"], rows["context"], features["example_id"], features["offset_mapping"], starts, ends)
    assert answers == {e["id"]: e["answers"]["text"][0] for e in examples}
    # The same with the windows in another order (processes may return them shuffled).
    order = rng.permutation(len(features)).tolist()
    shuffled = postprocess(
        rows["id"], rows["context"], [features["example_id"][i] for i in order],
        [features["offset_mapping"][i] for i in order], [starts[i] for i in order], [ends[i] for i in order],
    )
    assert shuffled == answers
    metric = load_metric("squad_v1").compute(
        predictions=[answers[i] for i in rows["id"]], references=[a["text"] for a in rows["answers"]]
    )
    assert metric == {"exact_match": 100.0, "f1": 100.0}


def test_answer_split_across_windows_comes_from_the_window_that_holds_it_whole(setting):
    ex = example("q", QUESTION, setting["split"])
    out = windows(setting, [ex])
    s = ex["answers"]["answer_start"][0]
    e = s + len(setting["split"])
    rng = np.random.default_rng(1)
    starts, ends = zip(*(peaked_logits(o, s, e, rng, setting["max_length"]) for o in out["offset_mapping"]))
    answers = postprocess(["q"], [CONTEXT], out["example_id"], out["offset_mapping"], starts, ends)
    assert answers == {"q": setting["split"]}
    # The window holding only its start, alone, gives a cut-off answer: the whole one really came
    # from the next window.
    first = next(i for i, o in enumerate(out["offset_mapping"]) if window_span(o)[0] <= s < window_span(o)[1])
    alone = postprocess(["q"], [CONTEXT], ["q"], [out["offset_mapping"][first]], [starts[first]], [ends[first]])
    assert alone["q"] and alone["q"] != setting["split"] and setting["split"].startswith(alone["q"])


# Hand-made offsets: "one two three four five six", two template/question tokens first.
WORDS = "one two three four five six"
OFFSETS = [None, None, [0, 3], [3, 7], [7, 13], [13, 18], [18, 23], [23, 27]]  # GPT-2 style: leading spaces


def scores(peaks: dict[int, float]):
    values = np.zeros(len(OFFSETS))
    for word, value in peaks.items():
        values[word + 2] = value
    return values


def answer(starts: dict, ends: dict, **kwargs) -> str:
    return postprocess(["x"], [WORDS], ["x"], [OFFSETS], [scores(starts)], [scores(ends)], **kwargs)["x"]


def test_postprocess_hand_made_offsets_and_leading_spaces_are_stripped():
    assert answer({1: 10}, {2: 10}) == "two three"
    assert answer({0: 10}, {0: 10}) == "one"
    assert answer({5: 10}, {5: 10}) == "six"


def test_max_answer_length_is_respected():
    # The best start and end are 5 tokens apart: allowed with max_answer_length=5 only.
    starts, ends = {0: 10}, {4: 10, 1: 5}
    assert answer(starts, ends, max_answer_length=5) == "one two three four five"  # 10 + 10
    assert answer(starts, ends, max_answer_length=4) == "one two"  # 10 + 5 beats 0 + 10
    assert answer(starts, ends, max_answer_length=2) == "one two"
    assert answer({0: 10}, {4: 10, 0: 2}, max_answer_length=1) == "one"  # 12 beats "five" alone (10)
    assert answer({0: 10}, {4: 10, 0: 2}) == "one two three four five"  # default 30


def test_end_before_start_is_never_returned():
    # The best end (two) lies before the best start (four): the best valid pair is used instead.
    assert answer({3: 10}, {1: 10, 4: 3}) == "four five"  # 13
    assert answer({3: 10, 0: 1}, {1: 10}) == "one two"  # 1 + 10 = 11 beats four alone, 10 + 0
    # The only pair among the n_best=1 candidates is reversed: no valid span at all.
    assert answer({3: 10}, {1: 10}, n_best=1) == ""


def test_example_without_a_valid_span_gets_the_empty_answer():
    offsets_without_context = [None, None, None]
    answers = postprocess(
        ["a", "b", "c", "d"], [WORDS] * 4,
        ["a", "b", "d"], [OFFSETS, offsets_without_context, OFFSETS],
        [scores({3: 10}), np.ones(3), scores({0: 5})], [scores({1: 10}), np.ones(3), scores({0: 5})],
        n_best=1,
    )
    # a: reversed only pair; b: a window with no context tokens; c: no window at all; d: fine.
    assert answers == {"a": "", "b": "", "c": "", "d": "one"}


def test_n_best_limits_the_candidates():
    # The valid pair needs the 2nd-best start: found with n_best=2, not with n_best=1.
    starts, ends = {4: 10, 0: 9}, {1: 10}
    assert answer(starts, ends, n_best=2) == "one two"
    assert answer(starts, ends, n_best=1) == ""


def test_best_window_wins_over_all_windows_of_an_example():
    second = [None, [7, 13], [13, 18], [18, 23]]  # "three four five" in another window
    answers = postprocess(
        ["x"], [WORDS], ["x", "x"], [OFFSETS, second],
        [scores({0: 5}), np.array([0, 0, 9, 0])], [scores({0: 5}), np.array([0, 0, 0, 9])],
    )
    assert answers == {"x": "four five"}  # 18 in the second window beats 10 in the first


# ---------------------------------------------------------------------------------------------
# SQuAD v1.1 exact match and F1, by hand


def squad(predictions, references):
    return load_metric("squad_v1").compute(predictions=predictions, references=references)


@pytest.mark.parametrize(
    "prediction, gold",
    [
        ("THE Beatles.", "beatles"),  # case, article, punctuation
        ("an apple, a pear!", "Apple Pear"),  # articles anywhere, commas
        ("  Denver   Broncos ", "Denver Broncos"),  # whitespace collapsed
        ("\"Sir\" Elton John", "sir elton john"),
        ("the the", "a"),  # both normalise to the empty string
    ],
)
def test_exact_match_after_normalisation(prediction, gold):
    assert squad([prediction], [[gold]])["exact_match"] == 100.0


@pytest.mark.parametrize(
    "prediction, gold",
    [
        ("Theatre", "atre"),  # "the" inside a word is not an article
        ("Eiffel-Tower", "Eiffel Tower"),  # punctuation is deleted, not turned into a space
        ("1,000", "1 000"),
        ("Anne", "ne"),
    ],
)
def test_no_exact_match_where_normalisation_must_not_reach(prediction, gold):
    assert squad([prediction], [[gold]])["exact_match"] == 0.0


def test_normalize_answer_itself():
    import importlib.util

    from finetune.metrics import METRICS_DIR

    spec = importlib.util.spec_from_file_location("squad_v1_module", METRICS_DIR / "squad_v1" / "squad_v1.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.normalize_answer("The Theatre of the Absurd!") == "theatre of absurd"
    assert module.normalize_answer("A, an; THE.") == ""
    assert module.normalize_answer("Eiffel-Tower's") == "eiffeltowers"


def test_max_over_several_gold_answers():
    # EM: one gold matches exactly. F1 vs "Panthers": P=1/3, R=1 -> 1/2; vs "Carolina Panthers": P=2/3, R=1 -> 4/5.
    result = squad(["Denver Broncos", "Carolina Panthers team"], [["Broncos", "the Denver Broncos"], ["Panthers", "Carolina Panthers"]])
    assert result["exact_match"] == pytest.approx(50.0)
    assert result["f1"] == pytest.approx(100 * (1 + 4 / 5) / 2)
    # Order of the gold answers does not matter.
    assert squad(["Carolina Panthers team"], [["Carolina Panthers", "Panthers"]])["f1"] == pytest.approx(80.0)


def test_partial_overlap_f1_by_hand():
    # "in city of paris france" (5 tokens) vs "paris capital city" (3): 2 shared -> P=2/5, R=2/3,
    # F1 = 2PR/(P+R) = 2*2/(5+3) = 1/2.
    assert squad(["in the city of Paris, France"], [["Paris, the capital city"]]) == {"exact_match": 0.0, "f1": pytest.approx(50.0)}
    # Repeated tokens count at most as often as in both: "cat cat cat" vs "cat cat dog": 2 shared,
    # P=2/3, R=2/3 -> 2/3.
    assert squad(["the cat cat cat"], [["cat cat dog"]])["f1"] == pytest.approx(100 * 2 / 3)
    # No shared token -> 0, and the empty prediction scores 0 against a non-empty gold.
    assert squad(["Rome"], [["Paris"]]) == {"exact_match": 0.0, "f1": 0.0}
    assert squad([""], [["Paris"]]) == {"exact_match": 0.0, "f1": 0.0}
    # As in the official v1.1 script, two answers that normalise to nothing match exactly but
    # have no token in common, so F1 is 0.
    assert squad(["the"], [["a"]]) == {"exact_match": 100.0, "f1": 0.0}


def test_scores_are_percent_means_over_examples():
    # EM: 1, 0, 0, 0. F1 = 2 * shared / (|prediction| + |gold|): 1; "big red" vs "red" 2*1/(2+1) = 2/3;
    # 0; "new york" vs "york city" 2*1/(2+2) = 1/2.
    result = squad(
        ["Paris", "big red", "Rome", "New York"],
        [["paris"], ["red"], ["Paris"], ["York city"]],
    )
    assert result["exact_match"] == pytest.approx(25.0)
    assert result["f1"] == pytest.approx(100 * (1 + 2 / 3 + 0 + 1 / 2) / 4)
