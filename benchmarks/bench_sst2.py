#!/usr/bin/env python
"""SST-2 training speed: finetune's loop against the transformers Trainer, side by side.

One invocation trains, one after another and each in its own subprocess (so peak memory and
warm caches do not leak from one setup into the next), on the same SST-2 training subset, with
the same model, learning rate, batch size, seed and one epoch:

  trainer-glue   transformers Trainer + GPT2ForSequenceClassification, configured as run_glue.py
                 does by default: every example padded to max_length 128, fp32.
  trainer-tuned  the same Trainer as the transformers docs configure it for speed: dynamic
                 padding with DataCollatorWithPadding, SDPA attention; bf16 and TF32 on CUDA only
                 (bf16 autocast is ~16x slower on this CPU), fused AdamW (the Trainer's default).
  ours           finetune's own training path: the composed Hydra config run by finetune.run.run
                 (the Trainer class of finetune.training.loop), with `--batching`.

`--ablation` adds our loop padded to 128 / dynamic padding / bucketed / token budget.
It prints one table (train seconds, examples/s, real and padded tokens/s, peak memory, dev
accuracy on all 872 dev sentences) and the speed ratios against both Trainer settings.

  python benchmarks/bench_sst2.py                        # CPU: 2,000 training sentences
  python benchmarks/bench_sst2.py --ablation --json out.json
  python benchmarks/bench_sst2.py --device cuda          # GPU: the full 67,349 (see README.md)

Peak memory is the peak RSS above the RSS when training started (sampled every 5 ms) on CPU, and
torch.cuda.max_memory_allocated on GPU. Throughput counts training only (not loading or eval).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("FINETUNE_SHARED_DATA", ROOT.parent / "shared" / "data"))
MINI_MODEL = SHARED_DATA / "models" / "gpt2-mini-pretrained"
SST2 = SHARED_DATA / "glue" / "SST-2"
GPT2_SMALL = dict(n_layer=12, n_embd=768, n_head=12, n_positions=1024)

SETUPS = {
    "trainer-glue": "HF Trainer, run_glue defaults (pad 128, fp32)",
    "trainer-tuned": "HF Trainer, tuned (dynamic padding, SDPA{cuda})",
    "ours-pad128": "finetune, padded to 128 (random order)",
    "ours-dynamic": "finetune, dynamic padding (random order)",
    "ours-bucketed": "finetune, length-bucketed batches",
    "ours-token_budget": "finetune, token-budget batches",
}


# ----------------------------------------------------------------------------- measuring
class PeakMemory:
    """Peak memory during training: RSS sampled in a thread on CPU, the allocator's peak on CUDA."""

    def __init__(self, device: str):
        self.device = device
        self.peak = self.base = 0
        self._stop = threading.Event()
        self._thread = None

    def start(self):
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            return
        import psutil

        process = psutil.Process()
        self.base = self.peak = process.memory_info().rss

        def sample():
            while not self._stop.wait(0.005):
                self.peak = max(self.peak, process.memory_info().rss)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()

    def so_far(self) -> float:
        """MiB so far: peak RSS above the start (CPU) or peak allocated (CUDA)."""
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() / 2**20
        import psutil

        self.peak = max(self.peak, psutil.Process().memory_info().rss)
        return (self.peak - self.base) / 2**20

    def stop(self) -> float:
        """Stop sampling; MiB as `so_far`."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
        return self.so_far()


class TokenCounter:
    """Wraps a collator: real (attention-mask) and padded tokens of every training batch."""

    def __init__(self, collate):
        self.collate, self.real, self.padded, self.batches = collate, 0, 0, 0

    def __call__(self, features):
        batch = self.collate(features)
        mask = batch["attention_mask"]
        self.real += int(mask.sum())
        self.padded += mask.numel()
        self.batches += 1
        return batch


# ----------------------------------------------------------------------------- workers
def worker_ours(args, setup: str) -> dict:
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    import finetune.training.loop as loop
    from finetune.config import register_configs
    from finetune.run import run

    batching = {"ours-pad128": "random", "ours-dynamic": "random"}.get(setup, setup.removeprefix("ours-"))
    cuda = args.device == "cuda"
    overrides = [
        "task=sst2", f"data_dir={SHARED_DATA}", "offline=true", f"seed={args.seed}",
        f"trainer.max_train_samples={args.train_samples}" if args.train_samples else "trainer.max_train_samples=null",
        "trainer.epochs=1", f"trainer.batch_size={args.batch_size}", f"trainer.eval_batch_size={args.eval_batch_size}",
        f"trainer.batching={batching}", f"trainer.pad_to_max_length={setup == 'ours-pad128'}",
        f"trainer.mixed_precision={'bf16' if cuda else 'no'}", f"trainer.cpu={not cuda}", f"trainer.compile={args.compile}",
        "trainer.tracker=null", "trainer.progress_bar=false", "trainer.log_every=50", "trainer.save_total_limit=1",
        f"optim.lr={args.lr}", f"optim.weight_decay={args.weight_decay}", f"optim.warmup_ratio={args.warmup_ratio}",
        "model.head_dropout=0.0",  # GPT2ForSequenceClassification has no dropout before its score layer
    ]
    if args.max_tokens:
        overrides.append(f"trainer.max_tokens={args.max_tokens}")
    overrides += args.override
    if args.model == "gpt2-small-random":
        overrides += ["model.from_scratch=true", f"model.tokenizer={MINI_MODEL}", "model.name_or_path=gpt2-small-random"]
        overrides += [f"model.{k}={v}" for k, v in GPT2_SMALL.items()]
    else:
        overrides.append(f"model.name_or_path={args.model_path}")
    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    out = Path(tempfile.mkdtemp(prefix=f"bench-{setup}-"))
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)

    measured = {}
    build_train_loader, fit, evaluate = loop.build_train_loader, loop.Trainer.fit, loop.Trainer.evaluate

    def counting_train_loader(*a, **k):
        loader, sampler = build_train_loader(*a, **k)
        measured["tokens"] = loader.collate_fn = TokenCounter(loader.collate_fn)
        return loader, sampler

    def measured_fit(self):
        measured["memory"] = PeakMemory(args.device)
        measured["memory"].start()
        summary = fit(self)
        measured["memory"].stop()
        measured["train_s"] = summary["train_seconds"]
        return summary

    def timed_evaluate(self):
        # One epoch: the only evaluation comes after the last training step. Like the Trainer's
        # figure (taken at on_train_end, before predict), the peak is the training peak.
        measured.setdefault("peak_mib", measured["memory"].so_far())
        start = time.perf_counter()
        results = evaluate(self)
        measured["eval_s"] = time.perf_counter() - start
        return results

    loop.build_train_loader, loop.Trainer.fit, loop.Trainer.evaluate = counting_train_loader, measured_fit, timed_evaluate
    run(cfg)
    metrics = json.loads((out / "metrics.json").read_text())
    tokens = measured["tokens"]
    return {
        "train_s": measured["train_s"], "examples": metrics["data"]["train"]["rows"], "real_tokens": tokens.real,
        "padded_tokens": tokens.padded, "batches": tokens.batches, "peak_mib": measured["peak_mib"],
        "accuracy": metrics["eval"]["accuracy"], "dev_examples": metrics["eval"]["num_examples"], "eval_s": measured.get("eval_s"),
        "output_dir": str(out),
    }


def worker_trainer(args, setup: str) -> dict:
    import csv

    import numpy as np
    import torch
    from datasets import load_dataset
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        GPT2Config,
        GPT2ForSequenceClassification,
        Trainer,
        TrainerCallback,
        TrainingArguments,
        default_data_collator,
        set_seed,
    )

    cuda = args.device == "cuda"
    tuned = setup == "trainer-tuned"
    set_seed(args.seed)
    raw = load_dataset(
        "csv", data_files={"train": str(SST2 / "train.tsv"), "validation": str(SST2 / "dev.tsv")},
        delimiter="\t", quoting=csv.QUOTE_NONE, keep_default_na=False,
    )
    train = raw["train"]
    if args.train_samples and args.train_samples < len(train):
        train = train.shuffle(seed=args.seed).select(range(args.train_samples))  # the subset finetune takes
    tokenizer = AutoTokenizer.from_pretrained(MINI_MODEL)
    tokenizer.pad_token = tokenizer.eos_token  # GPT-2 has no pad token; run_glue needs one set
    # run_glue.py: padding="max_length" (pad_to_max_length defaults to True), max_seq_length 128, truncation.
    padding = False if tuned else "max_length"

    def tokenize(batch):
        return tokenizer(batch["sentence"], padding=padding, max_length=128, truncation=True)

    train = train.map(tokenize, batched=True, remove_columns=["sentence"])
    dev = raw["validation"].map(tokenize, batched=True, remove_columns=["sentence"])
    if tuned:
        # run_glue's choice when not padding to max_length: multiples of 8 only under mixed precision
        collator = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8 if cuda else None)
    else:
        collator = default_data_collator
    attn = "sdpa" if tuned else None  # the glue row keeps whatever transformers picks by default
    if args.model == "gpt2-small-random":
        config = GPT2Config(vocab_size=len(tokenizer), num_labels=2, pad_token_id=tokenizer.pad_token_id, **GPT2_SMALL)
        if attn:
            config._attn_implementation = attn
        model = GPT2ForSequenceClassification(config)
    else:
        kwargs = {"attn_implementation": attn} if attn else {}
        model = AutoModelForSequenceClassification.from_pretrained(args.model_path, num_labels=2, dtype=torch.float32, **kwargs)
    model.config.pad_token_id = tokenizer.pad_token_id
    steps = math.ceil(len(train) / args.batch_size)
    out = Path(tempfile.mkdtemp(prefix=f"bench-{setup}-"))
    training_args = TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=args.eval_batch_size,
        learning_rate=args.lr, weight_decay=args.weight_decay, warmup_steps=math.ceil(args.warmup_ratio * steps),
        num_train_epochs=1, seed=args.seed, save_strategy="no", eval_strategy="no", logging_strategy="no",
        report_to="none", disable_tqdm=True, dataloader_num_workers=0, use_cpu=not cuda,
        bf16=tuned and cuda, tf32=True if (tuned and cuda) else None, torch_compile=bool(tuned and args.compile),
    )
    counter = TokenCounter(collator)
    measured = {}

    class Measure(TrainerCallback):
        def on_train_begin(self, *a, **k):
            measured["memory"] = PeakMemory(args.device)
            measured["memory"].start()
            measured["start"] = time.perf_counter()

        def on_train_end(self, *a, **k):
            if cuda:
                torch.cuda.synchronize()
            measured["train_s"] = time.perf_counter() - measured["start"]
            measured["peak_mib"] = measured["memory"].stop()

    trainer = Trainer(model=model, args=training_args, train_dataset=train, data_collator=counter, callbacks=[Measure()])
    trainer.train()
    train_tokens = (counter.real, counter.padded, counter.batches)
    start = time.perf_counter()
    trainer.data_collator = collator
    prediction = trainer.predict(dev)
    eval_s = time.perf_counter() - start
    accuracy = float((np.argmax(prediction.predictions, -1) == prediction.label_ids).mean())
    return {
        "train_s": measured["train_s"], "examples": len(train), "real_tokens": train_tokens[0], "padded_tokens": train_tokens[1],
        "batches": train_tokens[2], "peak_mib": measured["peak_mib"], "accuracy": accuracy, "dev_examples": len(dev),
        "eval_s": eval_s, "optim": str(training_args.optim), "attn": model.config._attn_implementation, "output_dir": str(out),
    }


def worker(args) -> None:
    import torch

    setup = args.worker
    result = (worker_trainer if setup.startswith("trainer") else worker_ours)(args, setup)
    result.update(setup=setup, threads=torch.get_num_threads(), device=args.device)
    print("BENCH_RESULT " + json.dumps(result), flush=True)


# ----------------------------------------------------------------------------- driver
def run_setup(args, setup: str) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", setup, *args.passthrough]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "TRANSFORMERS_VERBOSITY": "error"}
    load = os.getloadavg()[0]
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("BENCH_RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-6000:])
        raise SystemExit(f"{setup} failed (exit {proc.returncode})")
    result = json.loads(lines[-1].removeprefix("BENCH_RESULT "))
    result.update(wall_s=time.perf_counter() - start, load_before=load, load_after=os.getloadavg()[0])
    print(f"  {setup:<18} {result['train_s']:7.1f} s training, {result['examples'] / result['train_s']:6.1f} examples/s, "
          f"dev acc {result['accuracy']:.4f}  (process {result['wall_s']:.0f} s, load {load:.1f})", file=sys.stderr, flush=True)
    return result


def table(results: list[dict], args) -> str:
    by_setup = {r["setup"]: r for r in results}
    glue, tuned = by_setup.get("trainer-glue"), by_setup.get("trainer-tuned")
    eps = lambda r: r["examples"] / r["train_s"]  # noqa: E731
    mem = "peak RSS delta MiB" if args.device == "cpu" else "peak alloc MiB"
    lines = [
        f"| setup | train s | examples/s | real tokens/s | padded tokens/s | pad % | batches | {mem} | dev acc | eval s | vs glue | vs tuned |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        ratio = lambda base: f"{eps(r) / eps(base):.2f}x" if base else "-"  # noqa: E731
        lines.append(
            f"| {r['setup']} | {r['train_s']:.1f} | {eps(r):.1f} | {r['real_tokens'] / r['train_s']:.0f} | "
            f"{r['padded_tokens'] / r['train_s']:.0f} | {100 * (1 - r['real_tokens'] / r['padded_tokens']):.0f} | {r['batches']} | "
            f"{r['peak_mib']:.0f} | {r['accuracy']:.4f} | {r['eval_s']:.1f} | {ratio(glue)} | {ratio(tuned)} |"
        )
    return "\n".join(lines)


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-samples", type=int, default=None,
                        help="training sentences (default: 2000 on CPU, all 67,349 on CUDA; 0 = all)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--batching", choices=["dynamic", "bucketed", "token_budget"], default="bucketed",
                        help="our loop's batching for the 'ours' row (dynamic = random order, dynamic padding)")
    parser.add_argument("--ablation", action="store_true", help="also run our loop with pad-128, dynamic, bucketed and token budget")
    parser.add_argument("--setups", default=None, help="comma-separated subset of: " + ", ".join(SETUPS))
    parser.add_argument("--compile", action="store_true", help="torch.compile in our loop and in the tuned Trainer")
    parser.add_argument("--model", default="mini", help="mini (../shared/data/models/gpt2-mini-pretrained), "
                        "gpt2-small-random (GPT-2 small shape, random init), or a save_pretrained directory")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--eval-batch-size", type=int, default=128)
    parser.add_argument("--max-tokens", type=int, default=None, help="token budget (default: batch size x mean padded length)")
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--warmup-ratio", type=float, default=0.06)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="extra Hydra override for our rows (repeatable), e.g. --override optim.fused=false")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.device == "auto":
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.train_samples is None:
        args.train_samples = 2000 if args.device == "cpu" else 0
    args.model_path = str(MINI_MODEL) if args.model == "mini" else args.model
    args.passthrough = [
        f"--train-samples={args.train_samples}", f"--device={args.device}", f"--model={args.model}",
        f"--batch-size={args.batch_size}", f"--eval-batch-size={args.eval_batch_size}", f"--lr={args.lr}",
        f"--weight-decay={args.weight_decay}", f"--warmup-ratio={args.warmup_ratio}", f"--seed={args.seed}",
        *([f"--max-tokens={args.max_tokens}"] if args.max_tokens else []), *(["--compile"] if args.compile else []),
        *(f"--override={o}" for o in args.override),
    ]
    return args


def main(argv=None) -> None:
    args = parse(argv)
    if args.worker:
        return worker(args)
    ours = "ours-dynamic" if args.batching == "dynamic" else f"ours-{args.batching}"
    if args.setups:
        setups = [s.strip() for s in args.setups.split(",")]
        unknown = [s for s in setups if s not in SETUPS]
        if unknown:
            raise SystemExit(f"unknown setups {unknown}; choose from {', '.join(SETUPS)}")
    elif args.ablation:
        setups = ["trainer-glue", "trainer-tuned", "ours-pad128", "ours-dynamic", "ours-bucketed", "ours-token_budget"]
    else:
        setups = ["trainer-glue", "trainer-tuned", ours]
    import platform

    import torch

    header = (f"SST-2, {args.train_samples or 'all'} training sentences, 1 epoch, batch {args.batch_size}, lr {args.lr}, "
              f"seed {args.seed}, model {args.model}, device {args.device} "
              f"({torch.get_num_threads()} threads, {os.cpu_count()} CPUs{', ' + torch.cuda.get_device_name() if args.device == 'cuda' else ''}), "
              f"torch {torch.__version__}, python {platform.python_version()}, compile {args.compile}"
              + (f", our overrides: {' '.join(args.override)}" if args.override else ""))
    print(header, file=sys.stderr, flush=True)
    results = [run_setup(args, setup) for setup in setups]
    text = table(results, args)
    print(header)
    print(text)
    loads = [r["load_before"] for r in results] + [r["load_after"] for r in results]
    print(f"1-minute load average during the runs: {min(loads):.1f} to {max(loads):.1f} on {os.cpu_count()} CPUs")
    if args.json:
        args.json.write_text(json.dumps({"header": header, "results": results, "argv": sys.argv[1:]}, indent=2) + "\n")


if __name__ == "__main__":
    main()
