"""The training loop: Accelerate for devices, precision, accumulation, gathering and state."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from finetune.errors import TrainingDiverged
from finetune.training import checkpoint
from finetune.training.batching import build_eval_loader, build_train_loader, compile_model, enable_tf32
from finetune.training.evaluation import evaluate_split
from finetune.training.optim import build_optimizer, build_scheduler

log = logging.getLogger(__name__)


@dataclass
class Progress:
    """Everything besides model/optimizer/scheduler/RNG that a resumed run must restore."""

    step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0  # per process: what skip_first_batches skips on resume
    examples_seen: int = 0
    # Position in the epoch's shuffled order over all processes, and the examples per micro-batch over
    # all processes when saved: a resume with another process count or batch size restarts there.
    examples_in_epoch: int = 0
    world_batch: int | None = None
    best_value: float | None = None
    best_step: int | None = None
    best_metrics: dict = field(default_factory=dict)
    history: list = field(default_factory=list)

    def state_dict(self) -> dict:
        return dict(self.__dict__)

    def load_state_dict(self, state: dict) -> None:
        self.__dict__.update(state)


class Trainer:
    def __init__(self, cfg, accelerator, model, tokenizer, data, run_dir: Path):
        self.cfg, self.accelerator, self.data = cfg, accelerator, data
        self.run_dir = Path(run_dir)
        self.checkpoint_root = self.run_dir / "checkpoints"
        self.trainer_cfg = cfg.trainer
        self.main_metric = cfg.task.main_metric
        self.progress = Progress()

        # Batching mode, padding and evaluation order: see finetune.training.batching.
        on_cuda = accelerator.device.type == "cuda"
        loader_args = (tokenizer, data.input_format, cfg.task.max_length, cfg.seed)
        train_loader, self.sampler = build_train_loader(cfg.trainer, data.train, *loader_args, pin_memory=on_cuda)
        eval_loaders = {split: build_eval_loader(cfg.trainer, ds, *loader_args, pin_memory=on_cuda) for split, ds in data.evals.items()}
        if on_cuda and cfg.trainer.tf32:
            enable_tf32()
        if cfg.trainer.compile:
            compile_model(model, cfg.trainer)
        optimizer = build_optimizer(model, cfg.optim, on_cuda)
        self.model, self.optimizer, self.train_loader = accelerator.prepare(model, optimizer, train_loader)
        self.eval_loaders = {split: accelerator.prepare(loader) for split, loader in eval_loaders.items()}

        self.steps_per_epoch = math.ceil(len(self.train_loader) / cfg.trainer.grad_accum)
        # Examples of the epoch order that one micro-batch consumes over all processes (Accelerate
        # hands consecutive batches of the sampler's order to consecutive processes).
        # With a batch sampler (bucketed, token_budget) batches are the unit of the epoch's order.
        self.world_batch = (cfg.trainer.batch_size if cfg.trainer.batching == "random" else 1) * accelerator.num_processes
        self.progress.world_batch = self.world_batch
        self.total_steps = cfg.trainer.max_steps or cfg.trainer.epochs * self.steps_per_epoch
        self.epochs = math.ceil(self.total_steps / self.steps_per_epoch)
        # Stepped by hand once per optimizer step (not prepared: Accelerate would step it once per process).
        self.scheduler = build_scheduler(optimizer, cfg.optim, self.total_steps)
        self.state = {"scheduler": self.scheduler, "progress": self.progress}  # saved by checkpoint.save as JSON

    # ------------------------------------------------------------------ state
    def checkpoint_identity(self) -> dict:
        return {"task": self.cfg.task.name, "head": self.cfg.task.head, "num_labels": self.accelerator.unwrap_model(self.model).head.num_labels}

    def resume(self, resume: str) -> None:
        candidates = checkpoint.resolve_resume(resume, self.checkpoint_root)
        info = checkpoint.load_latest_valid(self.accelerator, candidates, self.checkpoint_identity(), self.state)
        self._finite_at = self.progress.step  # checkpoints are only written with finite weights
        self._adapt_position()
        # load_state restores Accelerate's micro-batch counter, which decides where accumulation
        # windows end; checkpoints are taken at optimizer steps, so restart it at a window boundary
        # for this run's grad_accum (it may differ from the checkpoint's, e.g. on fewer processes).
        self.accelerator.step = self.progress.step * self.trainer_cfg.grad_accum
        log.info("resumed from step %d (epoch %d, batch %d of the epoch)", info["step"], self.progress.epoch, self.progress.batches_in_epoch)

    def _adapt_position(self) -> None:
        """Resuming with another process count or per-process batch: keep the place in the data.

        The checkpoint's `batches_in_epoch` counts per-process batches; with N processes of batch b
        it stands for N*b examples each. When N*b differs now, restart at the same example of the
        epoch's order (rounded down to a whole micro-batch over all processes, so fewer than N*b
        examples may be seen twice). Optimizer steps, the LR schedule, model/optimizer state and
        the epoch carry over unchanged; the per-rank RNG states load where a rank's file exists.
        """
        p = self.progress
        if p.world_batch is None or p.world_batch == self.world_batch:
            p.world_batch = self.world_batch
            return
        position = p.examples_in_epoch or p.batches_in_epoch * p.world_batch
        p.batches_in_epoch = position // self.world_batch
        p.examples_in_epoch = p.batches_in_epoch * self.world_batch
        log.warning(
            "checkpoint written with %d examples per micro-batch over all processes, this run has %d "
            "(%d processes x batch %d): resuming at example %d of epoch %d (batch %d per process)%s",
            p.world_batch, self.world_batch, self.accelerator.num_processes, self.trainer_cfg.batch_size,
            p.examples_in_epoch, p.epoch, p.batches_in_epoch,
            f"; {position - p.examples_in_epoch} examples will be seen again" if position != p.examples_in_epoch else "",
        )
        p.world_batch = self.world_batch

    def save_checkpoint(self) -> Path:
        protect = {self.progress.best_step} if self.progress.best_step is not None else set()
        return checkpoint.save(
            self.accelerator, self.checkpoint_root, self.progress.step, self.checkpoint_identity(),
            keep=self.trainer_cfg.save_total_limit, protect=protect, state=self.state,
        )

    # ------------------------------------------------------------- evaluation
    def evaluate(self) -> dict:
        self._check_weights_finite()  # before the checkpoint: every checkpoint kept is a good one
        results = {
            split: evaluate_split(self.accelerator, self.model, loader, self.cfg.task.metrics,
                                  self.data.evals[split], self.data.examples[split])
            for split, loader in self.eval_loaders.items()
        }
        first = results[next(iter(results))]
        value = first[self.main_metric]
        record = {"step": self.progress.step, "epoch": self.progress.step / self.steps_per_epoch, **{f"eval_{s}": r for s, r in results.items()}}
        self.progress.history.append(record)
        improved = self.progress.best_value is None or value > self.progress.best_value
        if improved:
            self.progress.best_value, self.progress.best_step, self.progress.best_metrics = value, self.progress.step, results
        log.info(
            "step %d eval: %s (best %s=%.4f at step %d)",
            self.progress.step,
            ", ".join(f"{s}: " + " ".join(f"{k}={v:.4f}" for k, v in r.items() if k != "num_examples") for s, r in results.items()),
            self.main_metric, self.progress.best_value, self.progress.best_step,
        )
        self.accelerator.log({f"eval/{s}/{k}": v for s, r in results.items() for k, v in r.items()}, step=self.progress.step)
        self.save_checkpoint()
        return results

    # --------------------------------------------------------------- training
    def fit(self) -> dict:
        accelerator, cfg = self.accelerator, self.trainer_cfg
        model, optimizer = self.model, self.optimizer
        if cfg.resume:
            self.resume(cfg.resume)
        bar = tqdm(
            total=self.total_steps, initial=self.progress.step, desc="train",
            disable=not (cfg.progress_bar and accelerator.is_main_process), dynamic_ncols=True,
        )
        running_loss = torch.zeros((), device=accelerator.device)
        running_batches = 0
        window_start, window_examples = time.perf_counter(), 0
        train_start, start_step = time.perf_counter(), self.progress.step
        model.train()
        done = self.progress.step >= self.total_steps
        while not done and self.progress.epoch < self.epochs:
            # Accelerate's loader calls sampler.set_epoch(its own iteration count) when iterated, and a
            # resumed run's count starts at 0: set both to the epoch we are in.
            self.sampler.set_epoch(self.progress.epoch)
            self.train_loader.set_epoch(self.progress.epoch)
            loader = self.train_loader
            if self.progress.batches_in_epoch:
                loader = accelerator.skip_first_batches(self.train_loader, self.progress.batches_in_epoch)
            for batch in loader:
                with accelerator.accumulate(model):
                    loss = model(**batch)["loss"]
                    accelerator.backward(loss)
                    if accelerator.sync_gradients:
                        accelerator.clip_grad_norm_(model.parameters(), self.cfg.optim.max_grad_norm)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                self.progress.batches_in_epoch += 1
                self.progress.examples_in_epoch += self.world_batch
                batch_examples = len(batch["labels"]) * accelerator.num_processes
                self.progress.examples_seen += batch_examples
                window_examples += batch_examples
                running_loss += loss.detach()
                running_batches += 1
                if not accelerator.sync_gradients:
                    continue
                self.scheduler.step()
                self.progress.step += 1
                bar.update(1)
                at_end = self.progress.step >= self.total_steps
                if self.progress.step % cfg.log_every == 0 or at_end:
                    mean_loss = accelerator.reduce(running_loss, reduction="mean").item() / running_batches
                    self._check_finite(mean_loss)
                    elapsed = time.perf_counter() - window_start
                    lr = self.scheduler.get_last_lr()[0]
                    bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}", ex_s=f"{window_examples / elapsed:.0f}")
                    accelerator.log({"train/loss": mean_loss, "train/lr": lr, "train/examples_per_s": window_examples / elapsed}, step=self.progress.step)
                    log.info("step %d loss %.4f lr %.3e %.0f examples/s", self.progress.step, mean_loss, lr, window_examples / elapsed)
                    running_loss.zero_()
                    running_batches, window_start, window_examples = 0, time.perf_counter(), 0
                if cfg.eval_every and self.progress.step % cfg.eval_every == 0 and not at_end:
                    self.evaluate()
                if at_end:
                    done = True
                    break
            if not done:
                self.progress.epoch += 1
                self.progress.batches_in_epoch = 0
                self.progress.examples_in_epoch = 0
                if cfg.eval_every is None:
                    self.evaluate()
        bar.close()
        train_seconds = time.perf_counter() - train_start
        if not self.progress.history or self.progress.history[-1]["step"] != self.progress.step:
            self.evaluate()
        steps_run = self.progress.step - start_step
        return {
            "steps": self.progress.step,
            "epochs": self.progress.step / self.steps_per_epoch,
            "train_seconds": train_seconds,
            "steps_per_second": steps_run / train_seconds if train_seconds > 0 else None,
            "examples_seen": self.progress.examples_seen,
        }

    def _check_weights_finite(self) -> None:
        params = [p.detach() for p in self.model.parameters()]
        finite = torch.stack([torch.isfinite(p).all() for p in params]).all() if params else torch.tensor(True)
        if not bool(self.accelerator.reduce(finite.float().to(self.accelerator.device), reduction="min").item()):
            self._check_finite(float("nan"), what="model weights became non-finite")

    def _check_finite(self, mean_loss: float, what: str | None = None) -> None:
        """Stop on a non-finite loss, naming the step (or the steps since the last finite check)."""
        step = self.progress.step
        if math.isfinite(mean_loss):
            self._finite_at = step
            return
        since = getattr(self, "_finite_at", None)
        where = f"at step {step}" if since is not None and step - since <= 1 else (
            f"between step {since + 1} and step {step}" if since is not None else f"by step {step}")
        last = checkpoint.step_dirs(self.checkpoint_root)
        raise TrainingDiverged(
            f"{what or f'training loss became {mean_loss}'} {where}; stopped. "
            + (f"Last good checkpoint: {last[-1]}" if last else "No checkpoint was written yet")
            + " (lower optim.lr, or use trainer.mixed_precision=no)"
        )

    def load_best(self) -> None:
        """Put the best evaluated weights back into the model before export."""
        best = self.checkpoint_root / f"step-{self.progress.best_step}"
        if self.progress.best_step is not None and self.progress.best_step != self.progress.step and best.is_dir():
            self.accelerator.load_state(str(best))  # model (and optimizer, RNG); scheduler and progress stay
