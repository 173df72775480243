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
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate.utils import DistributedType
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from finetune.errors import ConfigError, TrainingDiverged
from finetune.training import checkpoint
from finetune.training.batching import build_eval_loader, build_train_loader, compile_model, enable_tf32
from finetune.training.evaluation import evaluate_split
from finetune.training.memory import PeakMemory
from finetune.training.optim import build_optimizer, build_scheduler
from finetune.training.preemption import Preempted, PreemptionGuard
from finetune.training.sampler import EpochShuffleSampler

log = logging.getLogger(__name__)

FILE_ONLY = {"file_only": True}  # `extra=` of log records the console leaves out while the progress bar shows


class _FileOnlyFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, "file_only", False)


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
    history: list = field(default_factory=list)  # one record per evaluation
    train_log: list = field(default_factory=list)  # {step, loss, lr, ...} every trainer.log_every steps (curves.png)
    # Early stopping: evaluations since the main metric last improved by more than min_delta, and that value.
    stale_evaluations: int = 0
    early_stopping_reference: float | None = None
    stopped_early: bool = False

    def state_dict(self) -> dict:
        return dict(self.__dict__)

    def load_state_dict(self, state: dict) -> None:
        self.__dict__.update(state)


def better(value: float, reference: float | None, mode: str, margin: float = 0.0) -> bool:
    """Is `value` better than `reference` by more than `margin`, in the direction of `mode` (max|min)?"""
    if reference is None:
        return True
    return value > reference + margin if mode == "max" else value < reference - margin


class Trainer:
    def __init__(self, cfg, accelerator, model, tokenizer, data, run_dir: Path, write_model_files=None, on_evaluate=()):
        """`on_evaluate`: callables `(unwrapped model, step)` run after every evaluation (e.g. text samples)."""
        self.cfg, self.accelerator, self.data = cfg, accelerator, data
        self.on_evaluate = list(on_evaluate)
        self.run_dir = Path(run_dir)
        self.checkpoint_root = self.run_dir / "checkpoints"
        self.trainer_cfg = cfg.trainer
        self.main_metric = cfg.task.main_metric
        self.metric_mode = cfg.task.main_metric_mode
        self.progress = Progress()
        self.write_model_files = write_model_files
        if cfg.trainer.grad_accum > 1 and accelerator.distributed_type == DistributedType.DEEPSPEED:
            raise ConfigError("trainer.grad_accum > 1 is not supported under DeepSpeed here (its engine accumulates by "
                              "itself); raise trainer.batch_size or the number of processes instead")

        # Batching mode, padding and evaluation order: see finetune.training.batching.
        on_cuda = accelerator.device.type == "cuda"
        loader_args = (tokenizer, data.input_format, cfg.task.max_length, cfg.seed)
        attention = getattr(getattr(model.backbone, "config", None), "_attn_implementation", None) or cfg.model.attn_implementation
        train_loader, self.sampler = build_train_loader(cfg.trainer, data.train, *loader_args, pin_memory=on_cuda, on_cuda=on_cuda,
                                                        attn_implementation=attention)
        eval_loaders = {split: build_eval_loader(cfg.trainer, ds, *loader_args, pin_memory=on_cuda, on_cuda=on_cuda)
                        for split, ds in data.evals.items()}
        if on_cuda and cfg.trainer.tf32:
            enable_tf32()
        if cfg.trainer.compile:
            compile_model(model, cfg.trainer)
        optimizer = build_optimizer(model, cfg.optim, on_cuda)
        self.model, self.optimizer, self.train_loader = accelerator.prepare(model, optimizer, train_loader)
        self.eval_loaders = {split: accelerator.prepare(loader) for split, loader in eval_loaders.items()}

        self.grad_accum = cfg.trainer.grad_accum
        self.steps_per_epoch = math.ceil(len(self.train_loader) / self.grad_accum)
        # Examples of the epoch order that one micro-batch consumes over all processes (Accelerate
        # hands consecutive batches of the sampler's order to consecutive processes).
        # With a batch sampler (bucketed, token_budget) batches are the unit of the epoch's order.
        per_example = isinstance(self.sampler, EpochShuffleSampler)  # random, packed
        self.world_batch = (cfg.trainer.batch_size if per_example else 1) * accelerator.num_processes
        self.progress.world_batch = self.world_batch
        self.total_steps = cfg.trainer.max_steps or cfg.trainer.epochs * self.steps_per_epoch
        self.epochs = math.ceil(self.total_steps / self.steps_per_epoch)
        self._check_early_stopping()
        # Stepped by hand once per optimizer step (not prepared: Accelerate would step it once per process).
        self.scheduler = build_scheduler(optimizer, cfg.optim, self.total_steps)
        self.state = {"scheduler": self.scheduler, "progress": self.progress}  # saved by checkpoint.save as JSON

    def _check_early_stopping(self) -> None:
        """Early stopping needs evaluations before the last step; say so before training."""
        patience = self.trainer_cfg.early_stopping.patience
        if patience is None:
            return
        every = self.trainer_cfg.eval_every or self.steps_per_epoch
        if every >= self.total_steps:
            where = (f"trainer.eval_every={self.trainer_cfg.eval_every}" if self.trainer_cfg.eval_every
                     else f"each epoch ({self.steps_per_epoch} steps)")
            raise ConfigError(
                f"trainer.early_stopping.patience={patience} needs evaluations during training, but the first one "
                f"({where}) comes at or after the last step ({self.total_steps}): set trainer.eval_every below {self.total_steps}"
            )

    # ------------------------------------------------------------------ state
    def checkpoint_identity(self) -> dict:
        """What a checkpoint must share with this run to resume it: the task and the model's shape
        (its trainable parameters differ between full fine-tuning and LoRA, or LoRA settings)."""
        model = self.accelerator.unwrap_model(self.model)
        return {"task": self.cfg.task.name, "head": self.cfg.task.head, "num_labels": model.head.num_labels,
                "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad)}

    def resume(self, resume: str) -> None:
        if resume == "auto" and not checkpoint.step_dirs(self.checkpoint_root):
            log.info("trainer.resume=auto: no checkpoint in %s yet, starting from step 0", self.checkpoint_root)
            return
        candidates = checkpoint.resolve_resume("latest" if resume == "auto" else resume, self.checkpoint_root)
        info = checkpoint.load_latest_valid(self.accelerator, candidates, self.checkpoint_identity(), self.state)
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
            self.accelerator, self.checkpoint_root, self.progress.step, self.checkpoint_identity(),
            keep=self.trainer_cfg.save_total_limit, protect=protect, state=self.state,
            write_model_files=self.write_model_files,
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
        p = self.progress
        record = {"step": p.step, "epoch": p.step / self.steps_per_epoch, **{f"eval_{s}": r for s, r in results.items()}}
        p.history.append(record)
        if better(value, p.best_value, self.metric_mode):
            p.best_value, p.best_step, p.best_metrics = value, p.step, results
        if better(value, p.early_stopping_reference, self.metric_mode, self.trainer_cfg.early_stopping.min_delta):
            p.early_stopping_reference, p.stale_evaluations = value, 0
        else:
            p.stale_evaluations += 1
        log.info(
            "step %d eval: %s (best %s=%.4f at step %d)",
            p.step,
            ", ".join(f"{s}: " + " ".join(f"{k}={v:.4f}" for k, v in r.items() if k != "num_examples") for s, r in results.items()),
            self.main_metric, p.best_value, p.best_step,
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
            p.step, self.main_metric, self.trainer_cfg.early_stopping.min_delta, p.stale_evaluations, p.best_value, p.best_step,
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
        accelerator.clip_grad_norm_(model.parameters(), self.cfg.optim.max_grad_norm)
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
        accelerator, cfg, p = self.accelerator, self.trainer_cfg, self.progress
        memory.start()
        bar = tqdm(total=self.total_steps, initial=p.step, desc="train", disable=not show_bar, dynamic_ncols=True)
        running, running_steps, run_examples = {}, 0, 0
        window_start, window_examples = time.perf_counter(), 0
        train_start, start_step = time.perf_counter(), p.step
        self.model.train()
        done = p.step >= self.total_steps
        while not done and p.epoch < self.epochs:
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
                run_examples += step_examples
                window_examples += step_examples
                for name, value in terms.items():
                    running[name] = running.get(name, 0) + value
                running_steps += 1
                p.step += 1
                bar.update(1)
                at_end = p.step >= self.total_steps
                if p.step % cfg.log_every == 0 or at_end:
                    self._log_training(running, running_steps, window_examples / (time.perf_counter() - window_start), bar)
                    running, running_steps, window_start, window_examples = {}, 0, time.perf_counter(), 0
                evaluated = False
                if cfg.eval_every and p.step % cfg.eval_every == 0 and not at_end:
                    self.evaluate()
                    evaluated = True
                if guard.requested(accelerator):
                    self._preempted(guard, bar, checkpointed=evaluated)
                if evaluated and self._should_stop_early():
                    at_end = True
                if at_end:
                    done = True
                    break
            if not done:
                p.epoch += 1
                p.batches_in_epoch = 0
                p.examples_in_epoch = 0
                if cfg.eval_every is None:
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
            "examples_per_second": run_examples / train_seconds if train_seconds > 0 else None,
            "examples_seen": p.examples_seen,
            "stopped_early": p.stopped_early,
            "stopped_at_step": p.step if p.stopped_early else None,
            # Over all of training: steps, evaluations and checkpoint writes (see finetune.training.memory).
            "peak_memory_mb": peak_mb,
            "peak_memory_kind": memory.kind,
        }

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
