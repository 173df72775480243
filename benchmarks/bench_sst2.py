#!/usr/bin/env python
"""SST-2 training speed: finetune's loop against the transformers Trainer, side by side.

One invocation trains, one after another and each in its own subprocess (so peak memory and
warm caches do not leak from one setup into the next), on the same SST-2 training subset, with
the same model, learning rate, batch size, seed and one epoch:

  trainer-grouped  the peer: the transformers Trainer configured the way a speed-minded user would
                   (and the transformers docs suggest): dynamic padding (DataCollatorWithPadding),
                   SDPA attention, length-grouped batches (`train_sampling_strategy="group_by_length"`),
                   fused AdamW (its default); bf16, TF32 and pad_to_multiple_of=8 on CUDA only (bf16
                   autocast is ~16x slower on this CPU). All ratios are against this row.
  ours-bucketed    finetune's default (`trainer.batching=bucketed`): the composed Hydra config run by
                   finetune.run.run (the Trainer class of finetune.training.loop).
  ceiling          no framework: a bare forward+backward+AdamW loop over pre-made full batches with no
                   padding (the same real tokens per step as an average batch, cut from the same
                   training sentences), the most real tokens/s this model and device give (on CPU
                   with the malloc setting of our CPU runs, finetune.training.allocator).

`--ablation` adds, for context:
  trainer-glue     the Trainer as run_glue.py configures it by default: every example padded to 128, fp32.
  trainer-tuned    the Trainer with dynamic padding and SDPA but random order (no length grouping).
  trainer-grouped-reuse  trainer-grouped with glibc's malloc set as our CPU runs set it (mmap threshold 32 MiB,
                   trim threshold 1 GiB: the MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ variables).
  ours-pad128 / ours-random / ours-token_budget / ours-packed   our loop padded to 128, in random order
                   with dynamic padding, in token-budget batches, and in padding-free packed rows.
  ours-bucketed-system  our default with glibc's default malloc (`trainer.reuse_host_memory=false`).

It prints one table: the whole job (process start to exit: imports, data loading and tokenization,
training, dev evaluation, saving the model), training seconds, examples/s, real and padded tokens/s,
peak memory, dev accuracy on all 872 dev sentences, and the ratios against trainer-grouped; then the
ceiling and how far our fastest mode is from it (in real tokens/s).

  python benchmarks/bench_sst2.py                        # CPU: 4,800 training sentences (150 steps of 32)
  python benchmarks/bench_sst2.py --ablation --json out.json
  python benchmarks/bench_sst2.py --ablation --train-samples 300      # a quick check that everything runs
  python benchmarks/bench_sst2.py --device cuda --model gpt2-small-random --ablation   # GPU: all 67,349

Peak memory is the peak RSS above the RSS when training started (sampled every 5 ms) on CPU, and
torch.cuda.max_memory_allocated on GPU. Throughput counts training only; the whole job counts everything.
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

from finetune.training import allocator  # ctypes and logging only: the driver stays light

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("FINETUNE_SHARED_DATA", ROOT.parent / "shared" / "data"))
MINI_MODEL = SHARED_DATA / "models" / "gpt2-mini-pretrained"
SST2 = SHARED_DATA / "glue" / "SST-2"
GPT2_SMALL = dict(n_layer=12, n_embd=768, n_head=12, n_positions=1024)

SETUPS = {
    "trainer-glue": "HF Trainer, run_glue defaults (pad 128, fp32)",
    "trainer-tuned": "HF Trainer, dynamic padding, SDPA, random order",
    "trainer-grouped": "HF Trainer, dynamic padding, SDPA, group_by_length{cuda}",
    "trainer-grouped-reuse": "trainer-grouped, glibc malloc as our CPU runs set it",
    "ours-pad128": "finetune, padded to 128 (random order)",
    "ours-random": "finetune, dynamic padding (random order)",
    "ours-bucketed": "finetune default: length-bucketed batches",
    "ours-bucketed-system": "finetune default, glibc's default malloc",
    "ours-token_budget": "finetune, token-budget batches",
    "ours-packed": "finetune, padding-free packed rows",
    "ceiling": "bare forward+backward loop, full batches, no padding",
}
PEER = "trainer-grouped"
DEFAULT_SETUPS = ["trainer-grouped", "ours-bucketed", "ceiling"]
ABLATION_SETUPS = ["trainer-glue", "trainer-tuned", "trainer-grouped", "trainer-grouped-reuse", "ours-pad128", "ours-random",
                   "ours-bucketed", "ours-bucketed-system", "ours-token_budget", "ours-packed", "ceiling"]
# What finetune.training.allocator does on CPU, as glibc's environment variables (read at process start).
GLIBC_REUSE_ENV = {"MALLOC_MMAP_THRESHOLD_": str(allocator.MMAP_THRESHOLD), "MALLOC_TRIM_THRESHOLD_": str(allocator.TRIM_THRESHOLD)}


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


def measuring_callback(measured: dict, device: str):
    """A Trainer callback that puts the training seconds and peak memory (as PeakMemory) into `measured`."""
    import torch
    from transformers import TrainerCallback

    class Measure(TrainerCallback):
        def on_train_begin(self, *a, **k):
            measured["memory"] = PeakMemory(device)
            measured["memory"].start()
            measured["start"] = time.perf_counter()

        def on_train_end(self, *a, **k):
            if device == "cuda":
                torch.cuda.synchronize()
            measured["train_s"] = time.perf_counter() - measured["start"]
            measured["peak_mib"] = measured["memory"].stop()

    return Measure()


class TokenCounter:
    """Wraps a collator: real and padded (computed) tokens of every training batch, padded or packed."""

    def __init__(self, collate):
        self.collate, self.real, self.padded, self.batches = collate, 0, 0, 0

    def __call__(self, features):
        batch = self.collate(features)
        if "sequence_ids" in batch:  # packed rows: 0 marks the padding at the end of a row
            self.real += int((batch["sequence_ids"] > 0).sum())
            self.padded += batch["sequence_ids"].numel()
        else:
            for key in ("attention_mask", "attention_mask_swapped"):
                if key in batch:
                    self.real += int(batch[key].sum())
                    self.padded += batch[key].numel()
        self.batches += 1
        return batch


# ----------------------------------------------------------------------------- workers
def worker_ours(args, setup: str) -> dict:
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    import finetune.training.loop as loop
    from finetune.config import register_configs
    from finetune.run import run

    batching = {"ours-pad128": "random", "ours-bucketed-system": "bucketed"}.get(setup, setup.removeprefix("ours-"))
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
        f"trainer.reuse_host_memory={setup != 'ours-bucketed-system'}",
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
        TrainingArguments,
        default_data_collator,
        set_seed,
    )

    cuda = args.device == "cuda"
    grouped = setup.startswith("trainer-grouped")  # trainer-grouped and trainer-grouped-reuse
    tuned = grouped or setup == "trainer-tuned"  # dynamic padding, SDPA (and bf16/TF32 on CUDA)
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
        train_sampling_strategy="group_by_length" if grouped else "random",
    )
    counter = TokenCounter(collator)
    measured = {}
    trainer = Trainer(model=model, args=training_args, train_dataset=train, data_collator=counter, callbacks=[measuring_callback(measured, args.device)])
    trainer.train()
    train_tokens = (counter.real, counter.padded, counter.batches)
    start = time.perf_counter()
    trainer.data_collator = collator
    prediction = trainer.predict(dev)
    eval_s = time.perf_counter() - start
    accuracy = float((np.argmax(prediction.predictions, -1) == prediction.label_ids).mean())
    trainer.save_model(str(out / "model"))  # our job exports its model too: the whole job ends with one saved
    return {
        "train_s": measured["train_s"], "examples": len(train), "real_tokens": train_tokens[0], "padded_tokens": train_tokens[1],
        "batches": train_tokens[2], "peak_mib": measured["peak_mib"], "accuracy": accuracy, "dev_examples": len(dev),
        "eval_s": eval_s, "optim": str(training_args.optim), "attn": model.config._attn_implementation, "output_dir": str(out),
    }


def worker_ceiling(args, setup: str) -> dict:
    """A bare loop, no framework: forward, backward and a fused AdamW step over pre-made full batches.

    The training sentences are tokenized as the Trainer rows do, their tokens laid end to end and cut
    into rows of the mean sentence length, `batch_size` rows per batch: every token is real (no
    padding, no mask), and a step holds as many real tokens as an average batch. The loss is the
    classification loss on each row's last token (GPT2ForSequenceClassification finds no pad id)."""
    import csv

    import torch
    from datasets import load_dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, GPT2Config, GPT2ForSequenceClassification

    cuda = args.device == "cuda"
    device = torch.device("cuda" if cuda else "cpu")
    torch.manual_seed(args.seed)
    rows = load_dataset("csv", data_files={"train": str(SST2 / "train.tsv")}, delimiter="\t", quoting=csv.QUOTE_NONE,
                        keep_default_na=False)["train"]
    if args.train_samples and args.train_samples < len(rows):
        rows = rows.shuffle(seed=args.seed).select(range(args.train_samples))  # the Trainer rows' subset
    tokenizer = AutoTokenizer.from_pretrained(MINI_MODEL)
    ids = tokenizer(list(rows["sentence"]), max_length=128, truncation=True)["input_ids"]
    length = max(1, round(sum(map(len, ids)) / len(ids)))
    stream = torch.tensor([t for x in ids for t in x])
    batches = stream[: len(stream) // (length * args.batch_size) * length * args.batch_size].view(-1, args.batch_size, length)
    labels = torch.tensor([int(label) for label in rows["label"]])
    batches = batches[: len(labels) // args.batch_size]  # at most one batch of labels per batch_size sentences
    if args.model == "gpt2-small-random":
        config = GPT2Config(vocab_size=len(tokenizer), num_labels=2, pad_token_id=tokenizer.eos_token_id, **GPT2_SMALL)
        config._attn_implementation = "sdpa"
        model = GPT2ForSequenceClassification(config)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(args.model_path, num_labels=2, dtype=torch.float32,
                                                                   attn_implementation="sdpa")
    model.config.pad_token_id = -1  # never found: every row pools its last token
    model.to(device).train()
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:  # the best a bare CPU loop gets: the allocator setting of our CPU runs
        allocator.reuse_freed_host_memory()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay, fused=True)
    batches = batches.to(device)
    targets = labels[: batches.shape[0] * args.batch_size].view(-1, args.batch_size).to(device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False)

    def step(i):
        with autocast:
            loss = model(input_ids=batches[i], labels=targets[i], use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    warmup = min(3, len(batches))
    for i in range(warmup):
        step(i)
    memory = PeakMemory(args.device)
    memory.start()
    start = time.perf_counter()
    for i in range(warmup, len(batches)):
        step(i)
    if cuda:
        torch.cuda.synchronize()
    train_s = time.perf_counter() - start
    timed = len(batches) - warmup
    tokens = timed * args.batch_size * length
    return {"train_s": train_s, "examples": timed * args.batch_size, "real_tokens": tokens, "padded_tokens": tokens,
            "batches": timed, "peak_mib": memory.stop(), "accuracy": None, "dev_examples": 0, "eval_s": None, "row_tokens": length}


def worker(args) -> None:
    import torch

    setup = args.worker
    if setup == "ceiling":
        result = worker_ceiling(args, setup)
    else:
        result = (worker_trainer if setup.startswith("trainer") else worker_ours)(args, setup)
    result.update(setup=setup, threads=torch.get_num_threads(), device=args.device)
    print("BENCH_RESULT " + json.dumps(result), flush=True)


# ----------------------------------------------------------------------------- driver
def run_setup(args, setup: str) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", setup, *args.passthrough]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "TRANSFORMERS_VERBOSITY": "error", **(GLIBC_REUSE_ENV if setup == "trainer-grouped-reuse" else {})}
    load = os.getloadavg()[0]
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("BENCH_RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-6000:])
        raise SystemExit(f"{setup} failed (exit {proc.returncode})")
    result = json.loads(lines[-1].removeprefix("BENCH_RESULT "))
    result.update(job_s=time.perf_counter() - start, load_before=load, load_after=os.getloadavg()[0])
    accuracy = "-" if result["accuracy"] is None else f"{result['accuracy']:.4f}"
    print(f"  {setup:<18} {result['train_s']:7.1f} s training, {result['examples'] / result['train_s']:6.1f} examples/s, "
          f"{result['real_tokens'] / result['train_s']:7.0f} real tokens/s, dev acc {accuracy}  (whole job {result['job_s']:.0f} s, "
          f"load {load:.1f})", file=sys.stderr, flush=True)
    return result


def finish_report(results: list[dict], header: str, args) -> None:
    """The machine load during the runs (timings mean little on a busy machine), and --json."""
    loads = [r["load_before"] for r in results] + [r["load_after"] for r in results]
    print(f"1-minute load average during the runs: {min(loads):.1f} to {max(loads):.1f} on {os.cpu_count()} CPUs")
    if args.json:
        args.json.write_text(json.dumps({"header": header, "results": results, "argv": sys.argv[1:]}, indent=2) + "\n")


def table(results: list[dict], args) -> str:
    """One row per setup; ratios against the peer (trainer-grouped): training examples/s and whole job."""
    by_setup = {r["setup"]: r for r in results}
    peer = by_setup.get(PEER)
    eps = lambda r: r["examples"] / r["train_s"]  # noqa: E731
    mem = "peak RSS delta MiB" if args.device == "cpu" else "peak alloc MiB"
    lines = [
        f"| setup | whole job s | train s | examples/s | real tokens/s | padded tokens/s | pad % | batches | {mem} | dev acc | eval s "
        f"| examples/s vs {PEER} | whole job vs {PEER} |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        if r["setup"] == "ceiling":
            continue
        speed = f"{eps(r) / eps(peer):.2f}x" if peer else "-"
        job = f"{peer['job_s'] / r['job_s']:.2f}x" if peer else "-"
        lines.append(
            f"| {r['setup']} | {r['job_s']:.1f} | {r['train_s']:.1f} | {eps(r):.1f} | {r['real_tokens'] / r['train_s']:.0f} | "
            f"{r['padded_tokens'] / r['train_s']:.0f} | {100 * (1 - r['real_tokens'] / r['padded_tokens']):.0f} | {r['batches']} | "
            f"{r['peak_mib']:.0f} | {r['accuracy']:.4f} | {r['eval_s']:.1f} | {speed} | {job} |"
        )
    ceiling = by_setup.get("ceiling")
    if ceiling:
        ceiling_tps = ceiling["real_tokens"] / ceiling["train_s"]
        lines.append("")
        lines.append(f"Ceiling (bare forward+backward+AdamW, {ceiling['batches']} pre-made full batches of {args.batch_size} x "
                     f"{ceiling['row_tokens']} real tokens, no padding): {ceiling_tps:.0f} real tokens/s, peak {ceiling['peak_mib']:.0f} MiB")
        ours = [r for r in results if r["setup"].startswith("ours-")]
        if ours:
            best = max(ours, key=lambda r: r["real_tokens"] / r["train_s"])
            best_tps = best["real_tokens"] / best["train_s"]
            lines.append(f"Our fastest mode in real tokens/s: {best['setup']}, {best_tps:.0f} real tokens/s = ceiling / "
                         f"{ceiling_tps / best_tps:.2f} (target: within 2x)")
    return "\n".join(lines)


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-samples", type=int, default=None,
                        help="training sentences (default: 4800 = 150 steps of 32 on CPU, all 67,349 on CUDA; 0 = all)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--batching", choices=["bucketed", "random", "token_budget", "packed"], default="bucketed",
                        help="our loop's batching for the 'ours' row without --ablation (default: bucketed, our default)")
    parser.add_argument("--ablation", action="store_true",
                        help="also the run_glue and ungrouped Trainer, and our loop padded to 128, random, token budget and packed")
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
        args.train_samples = 4800 if args.device == "cpu" else 0
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
    if args.setups:
        setups = [s.strip() for s in args.setups.split(",")]
        unknown = [s for s in setups if s not in SETUPS]
        if unknown:
            raise SystemExit(f"unknown setups {unknown}; choose from {', '.join(SETUPS)}")
    elif args.ablation:
        setups = ABLATION_SETUPS
    else:
        setups = [PEER, f"ours-{args.batching}", "ceiling"]
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
    finish_report(results, header, args)


if __name__ == "__main__":
    main()
