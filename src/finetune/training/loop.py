"""The training loop: Accelerate for devices, precision, gathering and state.

One optimizer step reads `trainer.grad_accum` micro-batches per process. Every loss term is a sum
over its units (examples, or tokens for a language-model loss) divided by the number of units in
the whole optimizer step, over all micro-batches and processes, counted before the first forward
pass: with lengths or batch sizes that vary, a mean of per-micro-batch means would weight units
unequally (the "gradient accumulation fix" transformers made in 2024). DDP averages gradients over
processes, so each process's loss is multiplied by the number of processes.
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from finetune.errors import TrainingDiverged
from finetune.training import checkpoint
from finetune.training.evaluation import evaluate_split
from finetune.training.memory import PeakMemory
from finetune.training.progress import Meter, Objective, Progress, Schedule, better
from finetune.training.preemption import Preempted, PreemptionGuard
from finetune.training.sampler import EpochShuffleSampler

log = logging.getLogger(__name__)

FILE_ONLY = {"file_only": True}  # `extra=` of log records the console leaves out while the progress bar shows


class _FileOnlyFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, "file_only", False)


class Trainer:
    """The loop over ready objects: a prepared model, optimizer and loaders (finetune.modes.train builds them)."""

    def __init__(self, accelerator, model, optimizer, scheduler, train_loader, sampler, eval_loaders: dict, data, *,
                 settings, schedule: Schedule, objective: Objective, identity: dict, max_grad_norm: float,
                 run_dir: Path, write_model_files=None, on_evaluate=()):
        """`settings`: trainer.*; `identity`: what a checkpoint must share with this run to resume it;
        `on_evaluate`: callables `(unwrapped model, step)` run after every evaluation (e.g. text samples)."""
        self.accelerator, self.model, self.optimizer, self.scheduler = accelerator, model, optimizer, scheduler
        self.train_loader, self.sampler, self.eval_loaders, self.data = train_loader, sampler, eval_loaders, data
        self.trainer_cfg, self.objective, self.identity, self.max_grad_norm = settings, objective, identity, max_grad_norm
        self.on_evaluate = list(on_evaluate)
        self.run_dir = Path(run_dir)
        self.checkpoint_root = self.run_dir / "checkpoints"
        self.write_model_files = write_model_files
        self.progress = Progress()
        self.grad_accum = settings.grad_accum
        self.steps_per_epoch, self.total_steps, self.epochs = schedule.steps_per_epoch, schedule.total_steps, schedule.epochs
        # Examples of the epoch order that one micro-batch consumes over all processes (Accelerate
        # hands consecutive batches of the sampler's order to consecutive processes).
        # With a batch sampler (bucketed, token_budget) batches are the unit of the epoch's order.
        per_example = isinstance(sampler, EpochShuffleSampler)  # random, packed
        self.world_batch = (settings.batch_size if per_example else 1) * accelerator.num_processes
        self.progress.world_batch = self.world_batch
        self.state = {"scheduler": scheduler, "progress": self.progress}  # saved by checkpoint.save as JSON

    # ------------------------------------------------------------------ state
    def resume(self, resume: str) -> None:
        if resume == "auto" and not checkpoint.step_dirs(self.checkpoint_root):
            log.info("trainer.resume=auto: no checkpoint in %s yet, starting from step 0", self.checkpoint_root)
            return
        candidates = checkpoint.resolve_resume("latest" if resume == "auto" else resume, self.checkpoint_root)
        info = checkpoint.load_latest_valid(self.accelerator, candidates, self.identity, self.state)
        self._finite_at = self.progress.step  # checkpoints are only written with finite weights
        self._adapt_position()
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
            self.accelerator, self.checkpoint_root, self.progress.step, self.identity,
            keep=self.trainer_cfg.save_total_limit, protect=protect, state=self.state,
            write_model_files=self.write_model_files,
        )

    # ------------------------------------------------------------- evaluation
    def evaluate(self) -> dict:
        self._check_weights_finite()  # before the checkpoint: every checkpoint kept is a good one
        results = {
            split: evaluate_split(self.accelerator, self.model, loader, self.objective.metrics,
                                  self.data.evals[split], self.data.examples[split])
            for split, loader in self.eval_loaders.items()
        }
        first = results[next(iter(results))]
        value = first[self.objective.main_metric]
        p = self.progress
        record = {"step": p.step, "epoch": p.step / self.steps_per_epoch, **{f"eval_{s}": r for s, r in results.items()}}
        p.history.append(record)
        if better(value, p.best_value, self.objective.mode):
            p.best_value, p.best_step, p.best_metrics = value, p.step, results
        if better(value, p.early_stopping_reference, self.objective.mode, self.trainer_cfg.early_stopping.min_delta):
            p.early_stopping_reference, p.stale_evaluations = value, 0
        else:
            p.stale_evaluations += 1
        log.info(
            "step %d eval: %s (best %s=%.4f at step %d)",
            p.step,
            ", ".join(f"{s}: " + " ".join(f"{k}={v:.4f}" for k, v in r.items() if k != "num_examples") for s, r in results.items()),
            self.objective.main_metric, p.best_value, p.best_step,
        )
        self.accelerator.log({f"eval/{s}/{k}": v for s, r in results.items() for k, v in r.items()}, step=p.step)
        for hook in self.on_evaluate:
            hook(self.accelerator.unwrap_model(self.model), p.step)
        self.save_checkpoint()
        return results

    def _should_stop_early(self) -> bool:
        """Every process decides from the same gathered metrics, so all stop at the same step."""
        patience = self.trainer_cfg.early_stopping.patience
        if patience is None or self.progress.stale_evaluations < patience:
            return False
        p = self.progress
        p.stopped_early = True
        log.warning(
            "early stopping at step %d: %s has not improved by more than %g for %d evaluations (best %.4f at step %d)",
            p.step, self.objective.main_metric, self.trainer_cfg.early_stopping.min_delta, p.stale_evaluations, p.best_value, p.best_step,
        )
        return True

    # --------------------------------------------------------------- training
    def _windows(self, loader):
        """Micro-batches grouped per optimizer step: grad_accum of them (fewer at the end of an epoch)."""
        window = []
        for batch in loader:
            window.append(batch)
            if len(window) == self.grad_accum:
                yield window
                window = []
        if window:
            yield window

    def _step_normalizers(self, window) -> dict:
        """Units of each loss term in the whole optimizer step, over all micro-batches and processes."""
        model = self.accelerator.unwrap_model(self.model)
        totals = {}
        for batch in window:
            for name, count in model.loss_counts(batch).items():
                totals[name] = totals.get(name, 0) + count
        if self.accelerator.num_processes > 1:
            names = sorted(totals)
            summed = self.accelerator.reduce(torch.stack([torch.as_tensor(totals[n], dtype=torch.float32, device=self.accelerator.device)
                                                          for n in names]), reduction="sum")
            totals = dict(zip(names, summed))
        return {name: torch.as_tensor(value, dtype=torch.float32, device=self.accelerator.device).clamp(min=1)
                for name, value in totals.items()}

    def _train_step(self, window) -> dict:
        """One optimizer step over a window of micro-batches; returns this process's loss terms (detached)."""
        accelerator, model = self.accelerator, self.model
        normalizers = self._step_normalizers(window)
        terms = {}
        for i, batch in enumerate(window):
            last = i == len(window) - 1
            with nullcontext() if last else accelerator.no_sync(model):
                out = model(**batch, loss_normalizers=normalizers)
                accelerator.backward(out["loss"] * accelerator.num_processes)
            terms["loss"] = terms.get("loss", 0) + out["loss"].detach()
            for name, value in out.get("loss_terms", {}).items():
                terms[name] = terms.get(name, 0) + value.detach()
        accelerator.clip_grad_norm_(model.parameters(), self.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return terms

    def fit(self) -> dict:
        accelerator, cfg = self.accelerator, self.trainer_cfg
        if cfg.resume:
            self.resume(cfg.resume)
        show_bar = cfg.progress_bar and accelerator.is_main_process
        quiet = _FileOnlyFilter()
        # With the bar on, console log lines are written through tqdm (never into the middle of the
        # bar) and the per-step lines go to the log file only: the bar shows loss, lr and speed.
        with PreemptionGuard() as guard, (logging_redirect_tqdm() if show_bar else nullcontext()):
            console = [h for h in logging.getLogger().handlers if not isinstance(h, logging.FileHandler)] if show_bar else []
            for handler in console:
                handler.addFilter(quiet)
            memory = PeakMemory(accelerator.device)
            try:
                return self._fit(guard, show_bar, memory)
            finally:
                memory.stop()  # (again) if training ended with an exception: the sampling thread ends
                for handler in console:
                    handler.removeFilter(quiet)

    def _fit(self, guard: PreemptionGuard, show_bar: bool, memory: PeakMemory) -> dict:
        p = self.progress
        memory.start()
        bar = tqdm(total=self.total_steps, initial=p.step, desc="train", disable=not show_bar, dynamic_ncols=True)
        meter = Meter()
        train_start, start_step = time.perf_counter(), p.step
        self.model.train()
        done = p.step >= self.total_steps
        while not done and p.epoch < self.epochs:
            done = self._epoch(guard, bar, meter)
            if not done:
                p.epoch += 1
                p.batches_in_epoch = 0
                p.examples_in_epoch = 0
                if self.trainer_cfg.eval_every is None:
                    self.evaluate()
                    done = self._should_stop_early()
        bar.close()
        train_seconds = time.perf_counter() - train_start
        if not p.history or p.history[-1]["step"] != p.step:
            self.evaluate()
        peak_mb = self._peak_over_processes(memory.stop())
        steps_run = p.step - start_step
        return {
            "steps": p.step,
            "max_steps": self.total_steps,
            "epochs": p.step / self.steps_per_epoch,
            "train_seconds": train_seconds,
            "steps_per_second": steps_run / train_seconds if train_seconds > 0 else None,
            "examples_per_second": meter.run_examples / train_seconds if train_seconds > 0 else None,
            "examples_seen": p.examples_seen,
            "stopped_early": p.stopped_early,
            "stopped_at_step": p.step if p.stopped_early else None,
            # Over all of training: steps, evaluations and checkpoint writes (see finetune.training.memory).
            "peak_memory_mb": peak_mb,
            "peak_memory_kind": memory.kind,
        }

    def _epoch(self, guard: PreemptionGuard, bar, meter: "Meter") -> bool:
        """The optimizer steps of the current epoch (from where a resumed run stopped); True when training is done."""
        accelerator, cfg, p = self.accelerator, self.trainer_cfg, self.progress
        # Accelerate's loader calls sampler.set_epoch(its own iteration count) when iterated, and a
        # resumed run's count starts at 0: set both to the epoch we are in.
        self.sampler.set_epoch(p.epoch)
        self.train_loader.set_epoch(p.epoch)
        loader = self.train_loader
        if p.batches_in_epoch:
            loader = accelerator.skip_first_batches(self.train_loader, p.batches_in_epoch)
        for window in self._windows(loader):
            terms = self._train_step(window)
            p.batches_in_epoch += len(window)
            p.examples_in_epoch += self.world_batch * len(window)
            step_examples = sum(len(batch["labels"]) for batch in window) * accelerator.num_processes
            p.examples_seen += step_examples
            meter.add(terms, step_examples)
            p.step += 1
            bar.update(1)
            at_end = p.step >= self.total_steps
            if p.step % cfg.log_every == 0 or at_end:
                self._log_training(meter.running, meter.steps, meter.examples_per_second(), bar)
                meter.restart_window()
            evaluated = False
            if cfg.eval_every and p.step % cfg.eval_every == 0 and not at_end:
                self.evaluate()
                evaluated = True
            if guard.requested(accelerator):
                self._preempted(guard, bar, checkpointed=evaluated)
            if at_end or (evaluated and self._should_stop_early()):
                return True
        return False

    def _peak_over_processes(self, peak_mb: float) -> float:
        """The largest process's peak: what each device (or each process's share of the host) must hold."""
        if self.accelerator.num_processes > 1:
            peak = torch.tensor(peak_mb, dtype=torch.float32, device=self.accelerator.device)
            peak_mb = float(self.accelerator.reduce(peak, reduction="max"))
        return round(peak_mb, 1)

    def _log_training(self, running: dict, steps: int, examples_per_s: float, bar) -> None:
        """Mean of each loss term over the steps since the last log line, over all processes."""
        names = sorted(running)
        values = torch.stack([torch.as_tensor(running[n], dtype=torch.float32, device=self.accelerator.device) for n in names])
        values = self.accelerator.reduce(values, reduction="sum") if self.accelerator.num_processes > 1 else values
        means = {n: float(v) / steps for n, v in zip(names, values.cpu().tolist())}
        self._check_finite(means["loss"])
        lr = self.scheduler.get_last_lr()[0]
        step = self.progress.step
        bar.set_postfix(loss=f"{means['loss']:.4f}", lr=f"{lr:.2e}", ex_s=f"{examples_per_s:.0f}")
        self.accelerator.log({**{f"train/{n}": v for n, v in means.items()}, "train/lr": lr, "train/examples_per_s": examples_per_s}, step=step)
        self.progress.train_log.append({"step": step, **means, "lr": lr})
        others = "".join(f" {n} {v:.4f}" for n, v in means.items() if n != "loss")
        log.info("step %d loss %.4f%s lr %.3e %.0f examples/s", step, means["loss"], others, lr, examples_per_s, extra=FILE_ONLY)

    def _preempted(self, guard: PreemptionGuard, bar, checkpointed: bool) -> None:
        bar.close()
        path = self.checkpoint_root / f"step-{self.progress.step}" if checkpointed else self.save_checkpoint()
        log.warning("stopped by %s after step %d; checkpoint %s", guard.signal_name or "a signal on another process", self.progress.step, path)
        raise Preempted(
            f"stopped by {guard.signal_name or 'a signal on another process'} after step {self.progress.step} of {self.total_steps}; "
            f"checkpoint {path}: continue with trainer.resume=latest (same hydra.run.dir)"
        )

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
