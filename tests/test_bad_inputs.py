"""Bad inputs end a run with exit code 2 and one `error: ...` line naming what is wrong, never a traceback.

Most cases run `train.py` in this process (runpy, as `python train.py ...` would, minus ~10 s of
imports per case); a few run it as a real subprocess to show that the actual CLI prints no traceback.
Every failure must come before training: no `checkpoints/` directory appears in the run directory.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import runpy
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra

from conftest import ROOT, TINY_FAST, run_train

TRAIN_PY = ROOT / "train.py"
QUICKSTART = ["experiment=quickstart", *TINY_FAST, "trainer.max_train_samples=64", "trainer.max_eval_samples=32",
              "trainer.batch_size=16", "trainer.max_steps=2"]

SST2_HEADER = "sentence\tlabel"
SST2_TRAIN = [
    "a gorgeous , witty , seductive movie .\t1",
    "the plot is nothing but boilerplate clichés .\t0",
    "it 's a charming and often affecting journey .\t1",
    "unflinchingly bleak and desperate\t0",
    "the acting , costumes , music are all first rate .\t1",
    "a dull , plodding mess .\t0",
    "one of the most exciting films of the year .\t1",
    "the jokes fall flat every single time .\t0",
]
SST2_DEV = [
    "a warm , funny and engaging film .\t1",
    "it never finds its footing .\t0",
    "smart and beautifully made .\t1",
    "tedious and overlong .\t0",
]
STSB_HEADER = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"


def stsb_row(i: int, s1: str, s2: str, score: str) -> str:
    return f"{i}\tmain-captions\tMSRvid\t2012test\t{i:04d}\tnone\tnone\t{s1}\t{s2}\t{score}"


STSB_ROWS = [
    stsb_row(0, "A plane is taking off.", "An air plane is taking off.", "5.000"),
    stsb_row(1, "A man is playing a flute.", "A man is playing a flute.", "3.800"),
    stsb_row(2, "A man is slicing a tomato.", "A dog is running.", "0.500"),
    stsb_row(3, "Three men are playing chess.", "Two men are playing chess.", "2.600"),
]


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def lines(*rows: str) -> str:
    return "".join(row + "\n" for row in rows)


def sst2_dir(root: Path, train: str | bytes | None = None, dev: str | bytes | None = None) -> Path:
    """A data_dir with glue/SST-2/{train,dev}.tsv; good files unless given."""
    write(root / "glue" / "SST-2" / "train.tsv", lines(SST2_HEADER, *SST2_TRAIN) if train is None else train)
    write(root / "glue" / "SST-2" / "dev.tsv", lines(SST2_HEADER, *SST2_DEV) if dev is None else dev)
    return root


def stsb_dir(root: Path, train: str | None = None) -> Path:
    write(root / "glue" / "STS-B" / "train.tsv", lines(STSB_HEADER, *STSB_ROWS) if train is None else train)
    write(root / "glue" / "STS-B" / "dev.tsv", lines(STSB_HEADER, *STSB_ROWS))
    return root


@dataclass
class Result:
    code: int | None
    stdout: str
    stderr: str
    run_dir: Path


def train_in_process(args: list[str], run_dir: Path) -> Result:
    """`python train.py *args` in this process: the SystemExit code, stdout and stderr."""
    GlobalHydra.instance().clear()
    out, err = io.StringIO(), io.StringIO()
    saved_argv = sys.argv
    sys.argv = [str(TRAIN_PY), *args, f"hydra.run.dir={run_dir}"]
    code: int | None = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                runpy.run_path(str(TRAIN_PY), run_name="__main__")
            except SystemExit as exit_:
                code = exit_.code
            except BaseException:  # an unexpected exception: shown the way the CLI would show it
                import traceback

                traceback.print_exc(file=err)
                code = 1
    finally:
        sys.argv = saved_argv
        GlobalHydra.instance().clear()
    return Result(code, out.getvalue(), err.getvalue(), run_dir)


def assert_one_line_error(result: Result, *expected: str, before_training: bool = True) -> str:
    """Exit code 2; stderr ends with the only `error: ` line, which contains every expected substring."""
    stderr = result.stderr
    assert "Traceback" not in stderr, stderr
    assert result.code == 2, (result.code, stderr[-3000:])
    text_lines = [line for line in stderr.splitlines() if line.strip()]
    assert text_lines, "nothing on stderr"
    errors = [line for line in text_lines if line.startswith("error: ")]
    assert len(errors) == 1, stderr[-3000:]
    assert text_lines[-1] == errors[0], stderr[-3000:]
    message = errors[0]
    for part in expected:
        assert part in message, f"{part!r} not in {message!r}"
    if before_training:
        assert not (result.run_dir / "checkpoints").exists(), "the run started training before failing"
        assert not (result.run_dir / "metrics.json").exists()
    return message


def fails(tmp_path: Path, args: list[str], *expected: str, before_training: bool = True) -> str:
    result = train_in_process([*TINY_FAST, *args], tmp_path / "run")
    return assert_one_line_error(result, *expected, before_training=before_training)


# ----------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def quickstart_run(tmp_path_factory) -> Path:
    """A finished 2-step quickstart run (2 labels): its checkpoints/ and exported model/."""
    run_dir = tmp_path_factory.mktemp("quickstart") / "run"
    result = train_in_process(QUICKSTART, run_dir)
    assert result.code in (0, None), result.stderr[-3000:]
    assert (run_dir / "model" / "config.json").is_file() and (run_dir / "checkpoints" / "step-2").is_dir()
    return run_dir


@pytest.fixture(scope="module")
def small_vocab_model(tmp_path_factory) -> Path:
    """A save_pretrained GPT-2 whose vocabulary (100) is smaller than the tiny tokenizer's."""
    from transformers import GPT2Config, GPT2Model

    path = tmp_path_factory.mktemp("small-vocab-model")
    GPT2Model(GPT2Config(vocab_size=100, n_layer=1, n_embd=16, n_head=2, n_positions=64)).save_pretrained(path)
    return path


# ------------------------------------------------------------------------ the config itself


def test_unknown_task_lists_the_valid_ones(tmp_path):
    fails(tmp_path, ["task=sst3"], "unknown task 'sst3'", "sst2", "stsb", "quickstart")


def test_unknown_model(tmp_path):
    fails(tmp_path, ["model=gpt5"], "unknown model 'gpt5'", "gpt2-medium")


def test_unknown_config_key_suggests_the_right_one(tmp_path):
    fails(tmp_path, ["trainer.bach_size=4"], "unknown config key 'trainer.bach_size'", "did you mean 'trainer.batch_size'")


def test_value_of_the_wrong_type(tmp_path):
    fails(tmp_path, ["trainer.batch_size=abc"], "config key 'trainer.batch_size'", "'abc'", "Integer")


def test_override_without_a_value(tmp_path):
    fails(tmp_path, ["trainer.batch_size"], "cannot parse the command-line override 'trainer.batch_size'", "key=value")


@pytest.mark.parametrize(
    "override, expected",
    [
        ("optim.lr=-1e-4", "config key 'optim.lr' = -0.0001: expected a positive number"),
        ("trainer.batch_size=0", "config key 'trainer.batch_size' = 0: expected an integer >= 1"),
        ("optim.warmup_ratio=1.5", "config key 'optim.warmup_ratio' = 1.5: expected a number in [0, 1]"),
        ("trainer.mixed_precision=fp8", "config key 'trainer.mixed_precision' = 'fp8': expected one of no, bf16, fp16, auto"),
    ],
)
def test_out_of_range_value(tmp_path, override, expected):
    fails(tmp_path, ["task=sst2", f"data_dir={sst2_dir(tmp_path / 'data')}", override], expected)


@pytest.mark.parametrize(
    "override, expected",
    [
        ("trainer.tracker=tensorbored", "config key 'trainer.tracker' = 'tensorbored': expected null or one of all, aim, tensorboard"),
        ("trainer.num_workers=-1", "config key 'trainer.num_workers' = -1: expected an integer >= 0"),
        ("task.local.encoding=utf-9", "config key 'task.local.encoding' = 'utf-9': expected a Python codec name"),
    ],
)
def test_values_the_libraries_would_reject_with_a_traceback(tmp_path, override, expected):
    fails(tmp_path, ["task=sst2", f"data_dir={sst2_dir(tmp_path / 'data')}", override], expected)


def test_max_length_beyond_the_context_window(tmp_path):
    fails(tmp_path, ["task=sst2", f"data_dir={sst2_dir(tmp_path / 'data')}", "task.max_length=512"],
          "task.max_length=512", "context window (256 positions)", "task.max_length<=256")


# --------------------------------------------------------------------------------- data files


def test_data_dir_does_not_exist(tmp_path):
    fails(tmp_path, ["task=sst2", f"data_dir={tmp_path / 'nowhere'}"], f"data_dir '{tmp_path / 'nowhere'}' does not exist")


def test_data_dir_without_the_task_files(tmp_path):
    (tmp_path / "data").mkdir()
    fails(tmp_path, ["task=sst2", f"data_dir={tmp_path / 'data'}"],
          "local 'train' split not found", str(tmp_path / "data" / "glue" / "SST-2" / "train.tsv"), "task.local.splits.train")


def test_file_missing_a_column(tmp_path):
    data = sst2_dir(tmp_path / "data", train=lines("text\tlabel", *SST2_TRAIN))
    fails(tmp_path, ["task=sst2", f"data_dir={data}"],
          "train.tsv", "column 'sentence' (task.local.columns.text) not found", "columns are: text, label")


def test_empty_split_file(tmp_path):
    data = sst2_dir(tmp_path / "data", dev="")
    fails(tmp_path, ["task=sst2", f"data_dir={data}"], "dev.tsv", "empty", "header")


def test_header_only_file(tmp_path):
    data = sst2_dir(tmp_path / "data", dev=lines(SST2_HEADER))
    fails(tmp_path, ["task=sst2", f"data_dir={data}"], "dev.tsv", "no data rows (only a header line)")


def test_tsv_row_with_too_few_fields_names_the_line(tmp_path):
    data = sst2_dir(tmp_path / "data", train=lines(SST2_HEADER, *SST2_TRAIN[:3], "a sentence with no label", *SST2_TRAIN[3:]))
    fails(tmp_path, ["task=sst2", f"data_dir={data}"],
          "train.tsv line 5: 1 field(s), expected 2 (sentence, label)", "a tab separator or a field is missing")


def test_tsv_row_with_an_extra_field_names_the_line(tmp_path):
    data = sst2_dir(tmp_path / "data", dev=lines(SST2_HEADER, *SST2_DEV[:1], "one\ttab too many\t1"))
    fails(tmp_path, ["task=sst2", f"data_dir={data}"], "dev.tsv line 3: 3 field(s), expected 2", "extra tab")


def test_label_outside_the_label_set_names_row_and_label(tmp_path):
    data = sst2_dir(tmp_path / "data", train=lines(SST2_HEADER, *SST2_TRAIN[:5], "a fine film .\t2", *SST2_TRAIN[5:]))
    fails(tmp_path, ["task=sst2", f"data_dir={data}"],
          "train.tsv line 7: label '2' is not in the label set ['negative', 'positive']", "task.on_unknown_label=drop")


def test_empty_text_names_the_row(tmp_path):
    data = sst2_dir(tmp_path / "data", dev=lines(SST2_HEADER, *SST2_DEV[:2], " \t1", *SST2_DEV[2:]))
    fails(tmp_path, ["task=sst2", f"data_dir={data}"], "dev.tsv line 4: empty 'text' (sentence)", "task.on_empty_text=drop")


def test_bytes_that_are_not_utf8_name_the_row_and_the_encoding_option(tmp_path):
    train = lines(SST2_HEADER, *SST2_TRAIN[:2]).encode() + "un film très réussi .\t1\n".encode("latin-1")
    data = sst2_dir(tmp_path / "data", train=train + lines(*SST2_TRAIN[2:]).encode())
    fails(tmp_path, ["task=sst2", f"data_dir={data}"], "train.tsv line 4", "utf-8", "task.local.encoding")


def test_similarity_score_that_is_not_a_number(tmp_path):
    data = stsb_dir(tmp_path / "data", train=lines(STSB_HEADER, *STSB_ROWS[:2], stsb_row(2, "A cat.", "A dog.", "high"), *STSB_ROWS[2:]))
    fails(tmp_path, ["task=stsb", f"data_dir={data}"], "train.tsv line 4: label 'high' is not a number")


def test_similarity_score_that_is_nan(tmp_path):
    data = stsb_dir(tmp_path / "data", train=lines(STSB_HEADER, *STSB_ROWS[:3], stsb_row(3, "A cat.", "A dog.", "NaN"), *STSB_ROWS[3:]))
    fails(tmp_path, ["task=stsb", f"data_dir={data}"], "train.tsv line 5: label 'NaN' is not a finite number")


def test_empty_jsonl_file(tmp_path):
    row = {"answerKey": "A", "id": "q1", "question": {"stem": "Where do fish live?",
                                                      "choices": [{"label": c, "text": f"place {c}"} for c in "ABCDE"]}}
    write(tmp_path / "data" / "commonsenseqa" / "train_rand_split.jsonl", "")
    write(tmp_path / "data" / "commonsenseqa" / "dev_rand_split.jsonl", json.dumps(row) + "\n")
    fails(tmp_path, ["task=commonsenseqa", f"data_dir={tmp_path / 'data'}"],
          "train_rand_split.jsonl: no data rows (the file is empty)")


def test_squad_json_with_a_question_missing_its_answers(tmp_path):
    article = {"title": "T", "paragraphs": [{"context": "Paris is in France.", "qas": [
        {"id": "1", "question": "Where is Paris?", "answers": [{"text": "France", "answer_start": 12}]},
        {"id": "2", "question": "What is Paris?"},
    ]}]}
    squad = tmp_path / "data" / "squad"
    write(squad / "train-v1.1.subset-44-articles.json", json.dumps({"data": [article]}))
    for part in ("dev-v1.1.part1-of-2.json", "dev-v1.1.part2-of-2.json"):
        write(squad / part, json.dumps({"data": [article]}))
    fails(tmp_path, ["task=squad", f"data_dir={tmp_path / 'data'}", "task.max_length=64", "task.head_args.stride=16"],
          "train-v1.1.subset-44-articles.json: data[0].paragraphs[0].qas[1] has no 'answers'", "SQuAD v1.1 JSON")


def test_text_longer_than_the_context_window_is_truncated_not_an_error(tmp_path):
    long_row = " ".join(["an endlessly long and winding sentence about a film"] * 6) + " .\t1"
    data = sst2_dir(tmp_path / "data", train=lines(SST2_HEADER, *SST2_TRAIN, long_row, long_row))
    result = train_in_process([*TINY_FAST, "task=sst2", f"data_dir={data}", "task.max_length=16",
                               "trainer.batch_size=4", "trainer.max_steps=2"], tmp_path / "run")
    assert result.code in (0, None), result.stderr[-3000:]
    assert "error:" not in result.stderr
    stats = json.loads((tmp_path / "run" / "metrics.json").read_text())["data"]
    assert stats["train"]["truncated"] >= 2 and stats["train"]["rows"] == len(SST2_TRAIN) + 2


# ------------------------------------------------------------------------- models, checkpoints


def test_model_path_that_does_not_exist(tmp_path):
    fails(tmp_path, ["task=sst2", f"data_dir={sst2_dir(tmp_path / 'data')}", "model.from_scratch=false",
                     f"model.name_or_path={tmp_path / 'no-model'}"],
          f"model.name_or_path '{tmp_path / 'no-model'}' does not exist")


def test_directory_that_is_not_a_model(tmp_path):
    (tmp_path / "not-a-model").mkdir()
    (tmp_path / "not-a-model" / "notes.txt").write_text("hello")
    fails(tmp_path, ["task=sst2", f"data_dir={sst2_dir(tmp_path / 'data')}", "model.from_scratch=false",
                     f"model.name_or_path={tmp_path / 'not-a-model'}"],
          f"model.name_or_path '{tmp_path / 'not-a-model'}' is not a model directory (no config.json)")


def test_tokenizer_that_does_not_match_the_model(tmp_path, small_vocab_model):
    fails(tmp_path, ["task=sst2", f"data_dir={sst2_dir(tmp_path / 'data')}", "model.from_scratch=false",
                     f"model.name_or_path={small_vocab_model}"],
          "tokenizer '", "has 499 tokens", f"model '{small_vocab_model}' embeds only 100",
          "the tokenizer does not belong to this model", "set model.tokenizer")


def test_model_with_truncated_weights(tmp_path, small_vocab_model):
    import shutil

    model = shutil.copytree(small_vocab_model, tmp_path / "truncated")
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    fails(tmp_path, ["task=sst2", f"data_dir={sst2_dir(tmp_path / 'data')}", "model.from_scratch=false",
                     f"model.name_or_path={model}"],
          f"model.name_or_path '{model}': could not load the model (SafetensorError", "corrupt or truncated")


def test_label_count_disagrees_with_the_checkpoint_head(tmp_path, quickstart_run):
    fails(tmp_path, ["task=stsb", f"data_dir={stsb_dir(tmp_path / 'data')}", "model.from_scratch=false",
                     f"model.name_or_path={quickstart_run / 'model'}"],
          f"model.name_or_path '{quickstart_run / 'model'}'", "fine-tuned for task 'quickstart' with a 2-output",
          "task 'stsb' needs 1 output(s) (regression)")


def test_resume_from_a_checkpoint_of_another_task(tmp_path, quickstart_run):
    checkpoint = quickstart_run / "checkpoints" / "step-2"
    fails(tmp_path, ["task=sst2", f"data_dir={sst2_dir(tmp_path / 'data')}", f"trainer.resume={checkpoint}"],
          f"checkpoint '{checkpoint}' was written for task='quickstart', this run has task='sst2'")


def test_resume_latest_without_any_checkpoint(tmp_path):
    fails(tmp_path, ["task=sst2", f"data_dir={sst2_dir(tmp_path / 'data')}", "trainer.resume=latest"],
          "trainer.resume=latest: no checkpoint found in", str(tmp_path / "run" / "checkpoints"))


def test_resume_from_a_directory_that_does_not_exist(tmp_path):
    fails(tmp_path, ["task=sst2", f"data_dir={sst2_dir(tmp_path / 'data')}", f"trainer.resume={tmp_path / 'nope'}"],
          f"trainer.resume='{tmp_path / 'nope'}' is not a checkpoint directory")


# ---------------------------------------------------------------------------------------- LoRA


@pytest.mark.parametrize(
    "override, expected",
    [
        ("peft.r=0", "config key 'peft.r' = 0: expected an integer >= 1"),
        ("peft.alpha=0", "config key 'peft.alpha' = 0.0: expected a positive number"),
        ("peft.alpha=-8", "config key 'peft.alpha' = -8.0: expected a positive number"),
        ("peft.dropout=1.0", "config key 'peft.dropout' = 1.0: expected a number in [0, 1)"),
        ("peft.target_modules=[]", "config key 'peft.target_modules' = []: expected a non-empty list of layer names"),
        ("model.gpt1_tokens=true", "peft=lora with model.gpt1_tokens=true: LoRA freezes the embeddings"),
    ],
)
def test_lora_settings_out_of_range(tmp_path, override, expected):
    fails(tmp_path, ["task=sst2", f"data_dir={sst2_dir(tmp_path / 'data')}", "peft=lora", override], expected)


def test_unsetting_a_config_group_with_null_says_how(tmp_path):
    fails(tmp_path, ["peft=lora", "peft=null"], "'peft=null' cannot unset a config group on the command line", "~peft")


def test_lora_target_that_matches_no_layer_lists_the_layers(tmp_path):
    fails(tmp_path, ["task=sst2", f"data_dir={sst2_dir(tmp_path / 'data')}", "peft=lora", "peft.target_modules=[c_attn,q_proj]"],
          "peft.target_modules ['q_proj'] match no layer of the backbone", "its adaptable layers are: c_attn, c_fc, c_proj")


def test_lora_without_peft_installed_names_the_install_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)  # `import peft` raises ImportError
    fails(tmp_path, ["task=sst2", f"data_dir={sst2_dir(tmp_path / 'data')}", "peft=lora"],
          "peft=lora needs the peft library, which is not installed", "pip install -e .", 'pip install "peft>=0.19"')


# ------------------------------------------------------------------------------------ offline


def test_offline_run_that_needs_the_hub_for_data(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    fails(tmp_path, ["task=sst2"], "needs dataset 'nyu-mll/glue' (sst2) from the Hub", "offline", "data_dir=<DIR>")


def test_offline_run_that_needs_the_hub_for_the_model(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    fails(tmp_path, ["task=sst2", f"data_dir={sst2_dir(tmp_path / 'data')}", "model.from_scratch=false",
                     "model.name_or_path=some-org/no-such-model"],
          "model 'some-org/no-such-model' must come from the Hugging Face Hub", "offline", "model.name_or_path=<local")


# ------------------------------------------------------------------- the real command line


def test_real_cli_prints_one_line_and_no_traceback(tmp_path):
    """Three cases in real subprocesses (two at a time): a compose-time, a data and a model error."""
    data = sst2_dir(tmp_path / "data", train=lines(SST2_HEADER, *SST2_TRAIN[:1], "ok\tmaybe"))
    good = sst2_dir(tmp_path / "good")
    cases = [
        (["trainer.bach_size=4"], "unknown config key 'trainer.bach_size'"),
        ([f"data_dir={data}", "task=sst2"], "train.tsv line 3: label 'maybe' is not in the label set"),
        ([f"data_dir={good}", "task=sst2", "model.from_scratch=false", f"model.name_or_path={tmp_path / 'none'}"],
         "does not exist"),
    ]
    env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}

    def one(index_case):
        index, (args, _) = index_case
        return run_train([*TINY_FAST, *args, f"hydra.run.dir={tmp_path / f'run{index}'}"], timeout=300, env=env)

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(one, enumerate(cases)))
    for index, ((_, expected), proc) in enumerate(zip(cases, results)):
        result = Result(proc.returncode, proc.stdout, proc.stderr, tmp_path / f"run{index}")
        assert_one_line_error(result, expected)


def test_a_multi_line_message_is_reported_on_one_line(monkeypatch, capsys):
    """Messages that wrap a library's error may contain newlines: the report stays one line."""
    from finetune import run as run_module
    from finetune.errors import DataError

    def fail(cfg):
        raise DataError("data.tsv: could not parse\n  detail one\n\n  detail two")

    monkeypatch.setattr(run_module, "run", fail)
    with pytest.raises(SystemExit) as exit_:
        run_module.run_and_report(None)
    assert exit_.value.code == 2
    assert capsys.readouterr().err == "error: data.tsv: could not parse; detail one; detail two\n"
