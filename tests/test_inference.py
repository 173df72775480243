"""Exported models predict what the framework predicts, for every head (finetune.load, the pipelines).

One tiny-model run per head on small made-up data in the real task layouts (sst2, rte, mrpc and
stsb in both orders and in one order, storycloze, squad), shared by the module. The framework's side
is `mode=predict` on the dev split (predictions/validation.tsv, 6 decimals); the other side reads
the same dev examples as a user would pass them. Plain transformers pipelines are checked where
the docs say they agree (and shown to disagree for both-order similarity).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import random
import re
from pathlib import Path

import pytest

import finetune
from conftest import ROOT, TINY_FAST, compose_config
from finetune.errors import InputError, ModelError

TOL = 1e-6  # the predictions TSV has 6 decimals
GOOD = ["great", "wonderful", "brilliant", "lovely", "superb", "charming"]
BAD = ["awful", "terrible", "boring", "dreadful", "poor", "tedious"]
NOUNS = ["film", "song", "meal", "book", "trip", "show", "game", "play"]
TRAIN_ROWS, DEV_ROWS = 16, 12
COMMON = [*TINY_FAST, "trainer.max_steps=2", "trainer.batch_size=8", "trainer.save_total_limit=1"]


def _sentence(rng, good: bool) -> str:
    return f"the {rng.choice(NOUNS)} was {rng.choice(GOOD if good else BAD)} and {rng.choice(GOOD if good else BAD)}"


def _tsv(path: Path, header: list[str], rows: list[list]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join("\t".join(map(str, r)) for r in [header, *rows]) + "\n", encoding="utf-8")


def _squad(path: Path, rng, n: int, offset: int) -> None:
    paragraphs = []
    for i in range(n):
        name, city = rng.choice(["Alice", "Bruno", "Chen", "Dara"]), rng.choice(["Paris", "Lagos", "Lima", "Oslo"])
        context = (f"{name} was born in {city} in {1900 + i}. The {rng.choice(NOUNS)} there was {rng.choice(GOOD)}. "
                   f"Later {name} moved away and wrote about the {rng.choice(NOUNS)} for many years.")
        question = rng.choice([("Where was {} born?", city), ("Who was born in {}?", name)])
        text = question[1]
        paragraphs.append({"context": context, "qas": [{
            "id": f"q{offset + i}", "question": question[0].format(city if text == name else name),
            "answers": [{"text": text, "answer_start": context.index(text)}]}]})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"data": [{"title": "t", "paragraphs": paragraphs}]}), encoding="utf-8")


def write_data(root: Path) -> dict:
    """Train and dev files for every task below; returns the dev examples as a user would pass them."""
    rng = random.Random(0)
    dev = {}
    for split, n in (("train", TRAIN_ROWS), ("dev", DEV_ROWS)):
        texts = [(_sentence(rng, i % 2 == 0), i % 2) for i in range(n)]
        _tsv(root / "glue" / "SST-2" / f"{split}.tsv", ["sentence", "label"], [[t, 1 - y] for t, y in texts])
        pairs = [(_sentence(rng, i % 2 == 0), _sentence(rng, i % 3 == 0), i % 2) for i in range(n)]
        _tsv(root / "glue" / "RTE" / f"{split}.tsv", ["index", "sentence1", "sentence2", "label"],
             [[i, a, b, ["entailment", "not_entailment"][y]] for i, (a, b, y) in enumerate(pairs)])
        _tsv(root / "glue" / "MRPC" / f"{split}.tsv", ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"],
             [[y, i, i, a, b] for i, (a, b, y) in enumerate(pairs)])
        _tsv(root / "glue" / "STS-B" / f"{split}.tsv", ["index", "sentence1", "sentence2", "score"],
             [[i, a, b, f"{(i * 0.37) % 5:.3f}"] for i, (a, b, _) in enumerate(pairs)])
        stories, header = [], ["InputStoryid", *[f"InputSentence{k}" for k in range(1, 5)],
                               "RandomFifthSentenceQuiz1", "RandomFifthSentenceQuiz2", "AnswerRightEnding"]
        for i in range(n):
            endings = [_sentence(rng, True), _sentence(rng, False)]
            stories.append([f"s{i}", *[_sentence(rng, k % 2 == 0) for k in range(4)], *endings, 1 + i % 2])
        folder = root / "storycloze"
        folder.mkdir(parents=True, exist_ok=True)
        name = "cloze_test_val__spring2016.csv" if split == "train" else "cloze_test_test__spring2016.csv"
        with open(folder / name, "w", newline="", encoding="utf-8") as handle:
            csv.writer(handle).writerows([header, *stories])
        if split == "train":
            _squad(root / "squad" / "train-v1.1.subset-44-articles.json", rng, n, 0)
        else:
            _squad(root / "squad" / "dev-v1.1.part1-of-2.json", rng, n // 2, 1000)
            _squad(root / "squad" / "dev-v1.1.part2-of-2.json", rng, n - n // 2, 2000)
            dev["sst2"] = [t for t, _ in texts]
            dev["pairs"] = [(a, b) for a, b, _ in pairs]
            dev["storycloze"] = [{"context": " ".join(s[1:5]), "choices": s[5:7]} for s in stories]
            dev["squad"] = []
            for part in ("part1", "part2"):
                for p in json.loads((root / "squad" / f"dev-v1.1.{part}-of-2.json").read_text())["data"][0]["paragraphs"]:
                    dev["squad"].append((p["qas"][0]["question"], p["context"]))
    return dev


# name -> (task overrides, which dev inputs)
RUNS = {
    "sst2": (["task=sst2"], "sst2"),
    "rte": (["task=rte"], "pairs"),
    "mrpc": (["task=mrpc"], "pairs"),
    "mrpc_one_order": (["task=mrpc", "task.head_args.both_orders=false"], "pairs"),
    "stsb": (["task=stsb"], "pairs"),
    "stsb_one_order": (["task=stsb", "task.head_args.both_orders=false"], "pairs"),
    "storycloze": (["task=storycloze"], "storycloze"),
    "squad": (["task=squad", "task.max_length=48", "task.head_args.stride=16", "task.head_args.max_answer_length=8"], "squad"),
}


def _run(overrides: list[str], out: Path) -> Path:
    from finetune.run import run
    from finetune.sweep import reset_accelerate_state

    try:
        run(compose_config(overrides, output_dir=out))
    finally:
        reset_accelerate_state()  # not end_job's gc.collect: a second per run, for nothing here
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{name: (run dir, predictions TSV rows of mode=predict on dev, dev inputs)}."""
    root = tmp_path_factory.mktemp("inference")
    data = root / "data"
    dev = write_data(data)
    out = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("finetune.modes.train.write_curves", lambda *args, **kwargs: None)  # 0.6 s a run, not tested here
        for name, (task, inputs) in RUNS.items():
            run_dir = _run([*task, *COMMON, f"data_dir={data}"], root / name)
            predict_dir = _run([*task, *COMMON, f"data_dir={data}", "mode=predict", "task.predict_split=validation",
                                "model.tokenizer=null", f"model.name_or_path={run_dir / 'model'}"], root / f"{name}-predict")
            with open(predict_dir / "predictions" / "validation.tsv", encoding="utf-8", newline="") as handle:
                rows = list(csv.DictReader(handle, delimiter="\t"))
            out[name] = (run_dir, rows, dev[inputs])
    return out


def assert_same(ours: list[dict], framework: list[dict], labels: list[str] | None) -> None:
    assert len(ours) == len(framework)
    for mine, theirs in zip(ours, framework):
        if labels is None and isinstance(mine["prediction"], float):  # regression
            assert abs(mine["prediction"] - float(theirs["prediction"])) <= TOL, (mine, theirs)
            continue
        assert mine["prediction"] == theirs["prediction"], (mine, theirs)
        if "probabilities" in mine:
            assert abs(mine["probability"] - float(theirs["probability"])) <= TOL
            for name, p in mine["probabilities"].items():
                assert abs(p - float(theirs[f"prob_{name}"])) <= TOL, (name, mine, theirs)


@pytest.mark.parametrize("name", list(RUNS))
def test_load_predicts_what_mode_predict_predicts(runs, name):
    run_dir, framework, inputs = runs[name]
    predictor = finetune.load(run_dir / "model", device="cpu")
    ours = predictor.predict(inputs)
    assert_same(ours, framework, predictor.labels)
    # One example at a time (other batches, other padding): the same predictions.
    assert_same([predictor.predict(x) for x in inputs[:3]], framework[:3], predictor.labels)
    if predictor.head == "multiple_choice":
        for mine, example in zip(ours, inputs):
            assert set(mine["probabilities"]) == {"1", "2"}
            assert mine["choice"] == example["choices"][int(mine["prediction"]) - 1]


def test_a_checkpoint_directory_predicts_like_the_export(runs):
    run_dir, framework, inputs = runs["mrpc"]
    best = json.loads((run_dir / "metrics.json").read_text())["best_step"]
    predictor = finetune.load(run_dir / "checkpoints" / f"step-{best}", device="cpu")
    assert_same(predictor.predict(inputs), framework, predictor.labels)


@pytest.mark.parametrize("name", list(RUNS))
def test_registered_pipelines_give_the_predictor_s_predictions(runs, name):
    from transformers import pipeline

    from finetune.pipelines import task_for_head

    run_dir, framework, inputs = runs[name]
    predictor = finetune.load(run_dir / "model", device="cpu")
    serve = pipeline(task_for_head(predictor.head), model=str(run_dir / "model"), device="cpu")
    assert_same(serve(inputs, batch_size=4), framework, predictor.labels)
    assert serve(inputs[0]) == predictor.predict(inputs[0])


def test_a_pipeline_of_the_wrong_kind_says_which_one_to_use(runs):
    from transformers import pipeline

    with pytest.raises(ModelError, match=r"has a 'span' head: use pipeline\(\"finetune-question-answering\""):
        pipeline("finetune-text-classification", model=str(runs["squad"][0] / "model"), device="cpu")


# --------------------------------------------------------------------------- plain transformers


def _plain(run_dir: Path, inputs, **kwargs) -> list[dict]:
    from transformers import pipeline

    classify = pipeline("text-classification", model=str(run_dir / "model"), device="cpu", **kwargs)
    as_dicts = [x if isinstance(x, str) else {"text": x[0], "text_pair": x[1]} for x in inputs]
    return classify(as_dicts)


@pytest.mark.parametrize("name", ["sst2", "rte", "mrpc_one_order"])
def test_plain_text_classification_pipeline_agrees_for_one_sequence_models(runs, name):
    run_dir, framework, inputs = runs[name]
    for scores, theirs in zip(_plain(run_dir, inputs, top_k=None), framework):
        by_label = {item["label"]: item["score"] for item in scores}
        assert max(by_label, key=by_label.get) == theirs["prediction"]
        for label, p in by_label.items():
            assert abs(p - float(theirs[f"prob_{label}"])) <= 1e-5  # masked vs unmasked padding: float noise


def test_plain_text_classification_pipeline_gives_a_one_order_regression_model_s_scores(runs):
    run_dir, framework, inputs = runs["stsb_one_order"]
    plain = [item["score"] for item in _plain(run_dir, inputs)]  # problem_type=regression: the score as it is
    assert plain == pytest.approx([float(r["prediction"]) for r in framework], abs=1e-5)


def test_plain_pipeline_scores_one_order_of_a_both_orders_model(runs):
    """What the model card warns about: W·h(a,b) instead of W·(h(a,b) + h(b,a))."""
    run_dir, framework, inputs = runs["stsb"]
    plain = [item["score"] for item in _plain(run_dir, inputs, function_to_apply="none")]
    ours = [row["prediction"] for row in finetune.load(run_dir / "model", device="cpu").predict(inputs)]
    assert max(abs(a - b) for a, b in zip(plain, ours)) > 1e-3
    assert ours == pytest.approx([float(r["prediction"]) for r in framework], abs=TOL)


def test_transformers_has_no_question_answering_pipeline_to_use_instead():
    from transformers.pipelines import PIPELINE_REGISTRY

    assert "question-answering" not in PIPELINE_REGISTRY.get_supported_tasks()
    assert "finetune-question-answering" in PIPELINE_REGISTRY.get_supported_tasks()


# --------------------------------------------------------------------------- docs


def test_docs_use_a_trained_model_snippets_run(runs, tmp_path, monkeypatch):
    """Every python block of docs/using-models.md's "Use a trained model" runs, in a directory where runs/<task> are our runs."""
    readme = (ROOT / "docs" / "using-models.md").read_text(encoding="utf-8")
    section = readme.split("## Use a trained model", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) >= 2
    for name in ("sst2", "mrpc", "stsb", "storycloze", "squad"):
        (tmp_path / "runs").mkdir(exist_ok=True)
        os.symlink(runs[name][0], tmp_path / "runs" / name)
    monkeypatch.chdir(tmp_path)
    for block in blocks:
        exec(compile(block, "docs/using-models.md", "exec"), {})


@pytest.mark.parametrize("name", list(RUNS))
def test_model_card_shows_a_way_to_load_it_that_runs(runs, name):
    run_dir = runs[name][0]
    card = (run_dir / "model" / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", card, flags=re.S)
    assert any("finetune.load" in b for b in blocks) and any('pipeline("finetune-' in b for b in blocks)
    for block in blocks:
        exec(compile(block.replace("<this directory>", str(run_dir / "model")), "model/README.md", "exec"), {})
    front = card.split("---\n")[1]
    plain_is_right = name in ("sst2", "rte", "mrpc_one_order", "stsb_one_order")
    assert any('pipeline("text-classification"' in b for b in blocks) == plain_is_right
    assert ("inference: false" in front) == (not plain_is_right)
    assert ("Do not use transformers' plain" in card) == (name in ("mrpc", "stsb"))


# --------------------------------------------------------------------------- bad input


def test_a_directory_that_is_not_an_export_is_one_clear_error(tmp_path, runs):
    with pytest.raises(ModelError, match="does not exist") as missing:
        finetune.load(tmp_path / "nowhere")
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "config.json").write_text("{}")
    with pytest.raises(ModelError, match=r"is not a fine-tuned finetune model \(no finetune.json\)") as plain:
        finetune.load(tmp_path / "plain")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "finetune.json").write_text((runs["sst2"][0] / "model" / "finetune.json").read_text())
    with pytest.raises(ModelError, match=r"has no weights") as no_weights:
        finetune.load(broken)
    for err in (missing, plain, no_weights):
        assert "\n" not in str(err.value)


@pytest.mark.parametrize("name, inputs, message", [
    ("mrpc", "one sentence", r"input: a single string, but a 'similarity' model reads a \(text, text_pair\) tuple"),
    ("mrpc", ["one sentence", "another"], r"input 0: a single string, but a 'similarity' model reads"),
    ("rte", [("a premise", "")], r"input 0: 'text_pair' is empty"),
    ("sst2", [{"sentence": "good"}], r"input 0: unknown key\(s\) \['sentence'\]; a 'classification' model reads a string"),
    ("sst2", ["good", ("good", "bad")], r"input 1: a tuple of 2; a 'classification' model reads a string or a dict with key 'text'$"),
    ("storycloze", {"context": "a story", "choices": "the end"}, r"'choices' must be a non-empty list of strings, got str"),
    ("storycloze", "a story", r"a 'multiple_choice' model reads a \(context, choices\) tuple"),
    ("storycloze", {"context": "a", "choices": ["x", "y", "z"]}, r"an example has 3 choices, but this model names 2 candidate positions"),
    ("squad", {"question": "Who?"}, r"input: no 'context', but a 'span' model reads a \(question, context\) tuple"),
    ("squad", 42, r"inputs: a int; a 'span' model reads"),
])
def test_inputs_of_the_wrong_shape_are_one_clear_error(runs, name, inputs, message):
    predictor = finetune.load(runs[name][0] / "model", device="cpu")
    with pytest.raises(InputError, match=message) as err:
        predictor.predict(inputs)
    assert "\n" not in str(err.value)
    assert isinstance(err.value, ValueError)


def test_optional_roles_come_for_all_examples_or_none():
    """A classifier's manifest without `input_roles` (older exports) takes texts or pairs, not both at once."""
    from finetune.inference import parse_inputs

    columns, single = parse_inputs([("a", "b"), {"text": "c", "text_pair": "d"}], "classification", ("text",), ("text_pair",))
    assert columns == {"text": ["a", "c"], "text_pair": ["b", "d"]} and not single
    with pytest.raises(InputError, match=r"'text_pair' is given for some examples and not others"):
        parse_inputs(["good", ("a", "b")], "classification", ("text",), ("text_pair",))


def test_predicting_prints_no_attention_mask_warning(runs):
    """The backbone runs without a padding mask on purpose (heads.encode_last); transformers must not warn."""
    import torch
    import transformers
    from transformers.utils import logging as hf_logging

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    try:
        predictor = finetune.load(runs["mrpc"][0] / "model", device="cpu")
        pad = predictor.tokenizer.pad_token_id
        control = transformers.GPT2Model(predictor.model.backbone.config).eval()
        hf_logging.warning_once.cache_clear()
        with torch.no_grad():
            control(input_ids=torch.tensor([[5, 6, pad]]))  # padded, no mask: transformers warns
        assert any("attention_mask" in r.getMessage() for r in records)
        records.clear()
        hf_logging.warning_once.cache_clear()
        predictor.predict([("a short one", "b"), ("a much longer first sentence than the other", "c")])
        assert not any("attention_mask" in r.getMessage() for r in records)
    finally:
        logger.removeHandler(handler)
