#!/usr/bin/env python
"""Language-model training speed: finetune's lm stage against the transformers Trainer, same blocks.

Both rows train the same GPT-2 (`GPT2LMHeadModel` for the Trainer, our backbone + tied `lm` head)
on the SAME blocks: the token stream our pipeline builds from the task's training text (documents,
an end-of-text token after each, cut into `--block-size` blocks, remainder dropped), which the
Trainer row reads the run_clm way (input_ids = labels, `default_data_collator`, no padding). Same
batch size, steps, learning rate, warmup, weight decay and seed; each row in its own subprocess.

  trainer   transformers Trainer + GPT2LMHeadModel (SDPA, fused AdamW by default; bf16 and TF32 on CUDA)
  ours      finetune.run.run on `task=<task>` (the loop of finetune.training.loop), fp32 on CPU, bf16 on CUDA

It prints training tokens/s (block tokens per second of training, loading and evaluation excluded),
peak memory and the final perplexity of each on the same validation blocks (exp of the mean NLL
per predicted token; the Trainer's eval_loss over equal blocks is that same mean).

  python benchmarks/bench_lm.py                                   # CPU: tinyshakespeare, mini model, 60 steps
  python benchmarks/bench_lm.py --steps 5 --batch-size 4          # a quick check that both rows run
  python benchmarks/bench_lm.py --device cuda --task wikitext2 --block-size 1024 --steps 500 --batch-size 16
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("FINETUNE_SHARED_DATA", ROOT.parent / "shared" / "data"))
MINI_MODEL = SHARED_DATA / "models" / "gpt2-mini-pretrained"
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_sst2 import PeakMemory, finish_report, measuring_callback  # noqa: E402  (same measuring as the SST-2 benchmark)


def overrides(args) -> list[str]:
    cuda = args.device == "cuda"
    extra = ["task.local.splits.train=test.txt"] if args.task == "wikitext2" else []
    return [
        f"task={args.task}", f"data_dir={SHARED_DATA}", "offline=true", f"seed={args.seed}", *extra,
        f"model.name_or_path={args.model}", f"task.max_length={args.block_size}", f"trainer.max_steps={args.steps}",
        f"trainer.eval_every={args.steps}",  # evaluate once, after the timed training (as the Trainer row does)
        f"trainer.batch_size={args.batch_size}", f"trainer.eval_batch_size={args.eval_batch_size}",
        f"trainer.max_eval_samples={args.eval_documents}" if args.eval_documents else "trainer.max_eval_samples=null",
        f"trainer.mixed_precision={'bf16' if cuda else 'no'}", f"trainer.cpu={not cuda}", "trainer.tracker=null",
        "trainer.progress_bar=false", "trainer.log_every=20", "trainer.save_total_limit=1", "task.head_args.sample_prompts=null",
        f"optim.lr={args.lr}", f"optim.weight_decay={args.weight_decay}", f"optim.warmup_ratio={args.warmup_ratio}",
    ]


def compose(args, out: Path):
    from hydra import compose as hydra_compose, initialize_config_dir
    from omegaconf import open_dict

    from finetune.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = hydra_compose(config_name="train", overrides=overrides(args))
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
    return cfg


def worker_ours(args) -> dict:
    import finetune.training.loop as loop
    from finetune.run import run

    out = Path(tempfile.mkdtemp(prefix="bench-lm-ours-"))
    cfg = compose(args, out)
    measured = {}
    fit = loop.Trainer.fit

    def measured_fit(self):
        measured["memory"] = PeakMemory(args.device)
        measured["memory"].start()
        summary = fit(self)
        measured["peak_mib"] = measured["memory"].stop()
        return summary

    loop.Trainer.fit = measured_fit
    run(cfg)
    metrics = json.loads((out / "metrics.json").read_text())
    train = metrics["train"]
    return {"train_s": train["train_seconds"], "blocks": train["examples_seen"], "perplexity": metrics["last_eval"]["eval_validation"]["perplexity"],
            "peak_mib": measured["peak_mib"], "eval_blocks": metrics["data"]["validation"]["blocks"], "output_dir": str(out)}


def worker_trainer(args) -> dict:
    import torch
    from transformers import GPT2LMHeadModel, Trainer, TrainingArguments, default_data_collator, set_seed

    from finetune.data.pipeline import prepare
    from finetune.hub import set_offline_mode
    from finetune.models.backbone import load_tokenizer
    from finetune.models.heads import HEADS

    cuda = args.device == "cuda"
    out = Path(tempfile.mkdtemp(prefix="bench-lm-trainer-"))
    cfg = compose(args, out)
    tokenizer, _ = load_tokenizer(cfg.model, set_offline_mode(True))
    data = prepare(cfg, tokenizer, HEADS["lm"], True, "train", ["validation"])  # the very blocks our row trains on

    def run_clm_columns(features):  # run_clm's group_texts output: input_ids, attention_mask, labels (= input_ids)
        features = features.remove_columns([c for c in features.column_names if c != "input_ids"])
        return features.map(lambda b: {"labels": b["input_ids"], "attention_mask": [[1] * len(x) for x in b["input_ids"]]},
                            batched=True)

    train, validation = run_clm_columns(data.train), run_clm_columns(data.evals["validation"])
    set_seed(args.seed)
    model = GPT2LMHeadModel.from_pretrained(args.model, dtype=torch.float32, attn_implementation="sdpa")
    training_args = TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=args.eval_batch_size,
        learning_rate=args.lr, weight_decay=args.weight_decay, warmup_steps=math.ceil(args.warmup_ratio * args.steps),
        max_steps=args.steps, seed=args.seed, save_strategy="no", eval_strategy="no", logging_strategy="no",
        report_to="none", disable_tqdm=True, dataloader_num_workers=0, use_cpu=not cuda, bf16=cuda, tf32=True if cuda else None,
    )
    measured = {}
    trainer = Trainer(model=model, args=training_args, train_dataset=train, data_collator=default_data_collator, callbacks=[measuring_callback(measured, args.device)])
    trainer.train()
    loss = trainer.evaluate(validation)["eval_loss"]
    return {"train_s": measured["train_s"], "blocks": args.steps * args.batch_size, "perplexity": math.exp(loss),
            "peak_mib": measured["peak_mib"], "eval_blocks": len(validation), "optim": str(training_args.optim), "output_dir": str(out)}


def run_row(args, row: str) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", row, *args.passthrough]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "TRANSFORMERS_VERBOSITY": "error", "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    load = os.getloadavg()[0]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("BENCH_RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-6000:])
        raise SystemExit(f"{row} failed (exit {proc.returncode})")
    result = json.loads(lines[-1].removeprefix("BENCH_RESULT "))
    result.update(row=row, tokens_per_s=result["blocks"] * args.block_size / result["train_s"], load_before=load, load_after=os.getloadavg()[0])
    print(f"  {row:<8} {result['tokens_per_s']:8.0f} tokens/s, perplexity {result['perplexity']:.3f} (load {load:.1f})", file=sys.stderr, flush=True)
    return result


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="tinyshakespeare", choices=["tinyshakespeare", "wikitext2", "rocstories_text"],
                        help="local LM task (wikitext2 trains on test.txt: the local copy has no train.txt)")
    parser.add_argument("--model", default=str(MINI_MODEL), help="a save_pretrained GPT-2 directory (default: the mini model)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--eval-batch-size", type=int, default=32)
    parser.add_argument("--eval-documents", type=int, default=None, help="validation documents (default: all)")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--warmup-ratio", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--rows", default="trainer,ours", help="comma-separated subset of: trainer, ours")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.device == "auto":
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    args.passthrough = [
        f"--task={args.task}", f"--model={args.model}", f"--device={args.device}", f"--block-size={args.block_size}",
        f"--batch-size={args.batch_size}", f"--eval-batch-size={args.eval_batch_size}", f"--steps={args.steps}", f"--lr={args.lr}",
        f"--weight-decay={args.weight_decay}", f"--warmup-ratio={args.warmup_ratio}", f"--seed={args.seed}",
        *([f"--eval-documents={args.eval_documents}"] if args.eval_documents else []),
    ]
    return args


def main(argv=None) -> None:
    args = parse(argv)
    if args.worker:
        import torch

        result = (worker_trainer if args.worker == "trainer" else worker_ours)(args)
        result.update(threads=torch.get_num_threads(), device=args.device)
        print("BENCH_RESULT " + json.dumps(result), flush=True)
        return
    import platform

    import torch

    header = (f"LM: {args.task}, blocks of {args.block_size}, batch {args.batch_size}, {args.steps} steps, lr {args.lr}, seed {args.seed}, "
              f"model {Path(args.model).name}, device {args.device} ({torch.get_num_threads()} threads, {os.cpu_count()} CPUs"
              f"{', ' + torch.cuda.get_device_name() if args.device == 'cuda' else ''}), torch {torch.__version__}, "
              f"python {platform.python_version()}")
    print(header, file=sys.stderr, flush=True)
    results = [run_row(args, row.strip()) for row in args.rows.split(",")]
    mem = "peak RSS delta MiB" if args.device == "cpu" else "peak alloc MiB"
    base = next((r for r in results if r["row"] == "trainer"), None)
    lines = [f"| row | train s | tokens/s | {mem} | validation perplexity | eval blocks | vs Trainer |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        ratio = f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}x" if base else "-"
        lines.append(f"| {r['row']} | {r['train_s']:.1f} | {r['tokens_per_s']:.0f} | {r['peak_mib']:.0f} | {r['perplexity']:.3f} | "
                     f"{r['eval_blocks']} | {ratio} |")
    print(header)
    print("\n".join(lines))
    finish_report(results, header, args)


if __name__ == "__main__":
    main()
