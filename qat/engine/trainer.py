"""The training loop: FP phase → QAT switch (FP eval, checkpoint, QuantLinear on) → QAT phase →
quantized eval, on any backend (qat.engine.backend). It knows models, optimizers, schedules,
steps, evaluation and its own state; nothing of claims, MLflow or trunks (qat.cell)."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Collection
from pathlib import Path

import torch

from qat import preemption
from qat.checkpoint import Checkpoint, latest_checkpoint
from qat.config import RunConfig
from qat.data import DatasetInfo, TokenLoader, eval_batches
from qat.engine.backend import Backend, Batch, autocast_dtype
from qat.engine.qat_switch import QatSwitch
from qat.engine.state import TrainState
from qat.errors import ConfigError, Interrupted, TrainingError
from qat.model import Transformer, count_parameters
from qat.optim import build_optimizer, set_learning_rate
from qat.progress import CellProgress, cell_label, swept_keys
from qat.schedule import LrSchedule, PhasePlan, plan_phases
from qat.tracking_schema import FINAL_METRIC, FP_METRIC, TRAIN_LOSS, TRAIN_LR, TRAIN_SPEED

MetricLog = Callable[[dict[str, float], int], None]  # (metrics, tokens seen)


class _Window:
    """Loss and speed since the last log (summed on the device: no sync every step)."""

    def __init__(self, device: torch.device) -> None:
        self.loss = torch.zeros((), device=device)
        self.steps = 0
        self.start = time.perf_counter()
        self.shown = math.nan

    def add(self, loss: torch.Tensor) -> None:
        self.loss += loss
        self.steps += 1

    def peek(self) -> float:
        """The mean loss so far (the last window's once flushed), for the progress bar."""
        if self.steps:
            self.shown = (self.loss / self.steps).item()
        return self.shown

    def flush(self, tokens_per_step: int) -> tuple[float, float]:
        mean = (self.loss / self.steps).item()
        self.shown = mean
        speed = self.steps * tokens_per_step / max(time.perf_counter() - self.start, 1e-9)
        self.loss.zero_()
        self.steps, self.start = 0, time.perf_counter()
        return mean, speed


class Trainer:
    def __init__(
        self,
        config: RunConfig,
        data: DatasetInfo,
        checkpoint_dir: Path,
        backend: Backend,
        resume: Checkpoint | bool | None = True,
        initial_weights: dict[str, torch.Tensor] | None = None,
        label: str | None = None,
    ) -> None:
        """``resume``: True = the newest checkpoint in ``checkpoint_dir``; or one; or None.
        ``initial_weights``: start from these (a pretrained model) instead of a random init.
        ``label``: the progress bar's name (default: the cell's, ``nano b4 f0.3 2M s0``)."""
        self.config = config
        self.label = label or cell_label(config, swept_keys())
        self._progress: CellProgress | None = None
        self.backend = backend
        self.checkpoint_dir = checkpoint_dir
        self.device = backend.device
        self.autocast_dtype = autocast_dtype(config.trainer.precision, self.device)
        self.plan: PhasePlan = plan_phases(config)
        self.schedule = LrSchedule(self.plan, config.schedule)
        self.data = data
        self.switch = QatSwitch(config.bits, config.quant, config.optim.qat_reset_moments)
        torch.manual_seed(config.seed)
        self.model = Transformer(config.model, data.vocab_size).to(self.device)
        if initial_weights is not None:
            self.model.load_state_dict(initial_weights)
        self.n_params, self.n_params_total = count_parameters(self.model)
        optimizer = build_optimizer(self.model, config.optim)
        if backend.fixed_parameters and self.plan.quantized:
            self.switch.convert(self.model, optimizer, active=False)
        self.loader = TokenLoader(
            data.train_path,
            config.data.batch_size,
            config.data.seq_len,
            config.seed,
            fraction=config.data.train_fraction,
            part=config.data.train_part,
        )
        self.state = TrainState()
        self._refuse_compiled_reference()
        self.forward, self.optimizer = backend.wrap(self.model, optimizer)
        if resume is True:
            resume = latest_checkpoint(checkpoint_dir)
        if isinstance(resume, Checkpoint):
            self.load(resume)
            print(f"[{config.run_key}] resuming from {resume.path} (step {self.step})")

    def _refuse_compiled_reference(self) -> None:
        config = self.config
        if config.trainer.compile and not config.is_fp_only and self.device.type == "cuda":
            from qat.quant import resolve_kernel

            if resolve_kernel(config.quant.kernel, self.device) == "reference":
                # Measured on an H100 with torch 2.11: the compiled reference autograd Function
                # gave every quantized weight a zero gradient. The CUDA kernel's op is correct.
                raise ConfigError(
                    "trainer.compile=true with the reference fake-quant on a GPU trains wrongly; "
                    "use quant.kernel=cuda (needs nvcc) or trainer.compile=false"
                )

    @property
    def step(self) -> int:
        return self.state.step

    @property
    def tokens_seen(self) -> int:
        return self.state.step * self.plan.tokens_per_step

    def train(self, log: MetricLog) -> tuple[float, float | None]:
        """Train the cell to its end; returns (final/val_loss, fp/val_loss)."""
        plan, state = self.plan, self.state
        if state.fp_val_loss is not None:  # resumed after the switch: the log may have missed it
            log({FP_METRIC: state.fp_val_loss}, plan.tokens_fp)
        # One bar for both phases, closed before any error is reported (never glued onto it).
        self._open_progress(plan.tokens_total)
        try:
            if state.step < plan.fp_steps:
                self.advance(plan.fp_steps, self.schedule, log)
            if plan.quantized and not state.quantized:  # also for qat_frac = 0: quantize FP
                self._switch_to_qat(log)
            self.advance(plan.total_steps, self.schedule, log)
        finally:
            self._close_progress()
        final = self.evaluate()
        self.save()  # the final model, before the run is FINISHED: what qat.export reads
        if not plan.quantized:
            state.fp_val_loss = final
            log({FP_METRIC: final}, self.tokens_seen)
        log({FINAL_METRIC: final}, self.tokens_seen)
        return final, state.fp_val_loss

    def advance(
        self,
        until: int,
        lr_multiplier: Callable[[int], float],
        log: MetricLog,
        pinned_steps: Collection[int] = (),
    ) -> None:
        """Take optimizer steps up to ``until``, logging and checkpointing on the way."""
        state, trainer_config = self.state, self.config.trainer
        interval = max(1, math.ceil(trainer_config.ckpt_every_frac * self.plan.total_steps))
        own_bar = self._progress is None  # a bare advance (a trunk's) has a bar of its own
        progress = self._open_progress(until * self.plan.tokens_per_step)
        progress.phase = "qat" if state.quantized else "fp"
        window = _Window(self.device)
        # Ctrl-C waits for the step boundary, to checkpoint first, in a single process; the
        # ranks of a multi-process cell could see it at different steps, so they stop at once.
        defer = self.backend.world_size == 1
        with preemption.training_loop(defer_interrupt=defer), contextlib.ExitStack() as closing:
            if own_bar:
                closing.callback(self._close_progress)
            while state.step < until:
                multiplier = lr_multiplier(state.step)
                lr = set_learning_rate(self.optimizer, self.config.optim.lr, multiplier)
                window.add(self.backend.train_step(self.loader.next_batch(), self._loss))
                state.step += 1
                progress.advance(self.plan.tokens_per_step, window.peek)
                pinned = state.step in pinned_steps
                periodic = state.step % interval == 0 and state.step < self.plan.total_steps
                if (
                    state.step % trainer_config.log_every == 0
                    or periodic
                    or pinned
                    or (state.step == until)
                ):
                    self._log_window(window, lr, log)
                if periodic or pinned:
                    self.save(pinned=pinned)
                if self.backend.stop_requested(state.step):  # SLURM asked: save, then requeue
                    self.save(pinned=pinned)
                    preemption.hand_over()
                if preemption.interrupted():  # Ctrl-C: save, then stop where a rerun resumes
                    self.save(pinned=pinned)
                    raise Interrupted(self.tokens_seen)

    def _open_progress(self, total_tokens: int) -> CellProgress:
        """The open bar, or a new one (shown on the main process only)."""
        if self._progress is None:
            enabled = self.config.trainer.progress and self.backend.is_main
            self._progress = CellProgress(
                self.label, total_tokens, self.tokens_seen, enabled=enabled
            )
        return self._progress

    def _close_progress(self) -> None:
        if self._progress is not None:
            self._progress.close()
            self._progress = None

    def _loss(self, batch: Batch) -> torch.Tensor:
        x, y = batch
        with self._autocast():
            logits = self.forward(x)
            return torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), y.flatten())

    def _log_window(self, window: _Window, lr: float, log: MetricLog) -> None:
        mean_loss, speed = window.flush(self.plan.tokens_per_step)
        mean_loss = self.backend.reduce_sum([mean_loss])[0] / self.backend.world_size
        # Logged before the check: a diverged run's record shows where it diverged.
        log({TRAIN_LOSS: mean_loss, TRAIN_LR: lr, TRAIN_SPEED: speed}, self.tokens_seen)
        if not math.isfinite(mean_loss):
            raise TrainingError(
                f"training loss is {mean_loss} at step {self.step} "
                f"({self.tokens_seen} tokens); lower optim.lr or check the data"
            )

    def _switch_to_qat(self, log: MetricLog) -> None:
        """End of the FP phase: evaluate, checkpoint the FP state, switch QAT on."""
        if self.state.fp_val_loss is None:
            self.state.fp_val_loss = self.evaluate()
            log({FP_METRIC: self.state.fp_val_loss}, self.tokens_seen)
        if not (self.checkpoint_dir / str(self.tokens_seen)).exists():
            self.save(pinned=True)  # the FP model at the switch: worth keeping
        self.switch.switch(self.model, self.optimizer, self.backend.write_param)
        self.state.quantized = True

    @torch.no_grad()
    def evaluate(self) -> float:
        data = self.config.data
        count: float  # an int token count until reduce_sum returns floats
        total, count = 0.0, 0
        self.model.eval()
        batches = eval_batches(self.data.val_path, data.batch_size, data.seq_len, data.eval_tokens)
        for index, (x, y) in enumerate(batches):
            if not self.backend.evaluates(index):
                continue
            with self._autocast():
                logits = self.forward(x.to(self.device))
            loss = torch.nn.functional.cross_entropy(
                logits.flatten(0, 1).float(), y.to(self.device).flatten(), reduction="sum"
            )
            total += loss.item()
            count += y.numel()
        self.model.train()
        total, count = self.backend.reduce_sum([total, float(count)])
        value = total / count
        if not math.isfinite(value):
            raise TrainingError(f"validation loss is {value} at {self.tokens_seen} tokens")
        return value

    def _autocast(self) -> contextlib.AbstractContextManager[None]:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def save(self, pinned: bool = False) -> Checkpoint | None:
        self.state.loader = self.loader.state_dict()
        return self.backend.save(
            self.checkpoint_dir,
            self.tokens_seen,
            self.model,
            self.optimizer,
            self.state.to_json(self.backend.name, pinned),
            keep=self.config.trainer.keep_checkpoints,
        )

    def load(self, checkpoint: Checkpoint) -> None:
        state = TrainState.from_checkpoint(checkpoint, self.backend.name)
        if state.quantized:
            self.switch.restore(self.model, self.optimizer)
        self.backend.load(checkpoint, self.model, self.optimizer)
        self.loader.load_state_dict(state.loader)
        checkpoint.restore_rng()
        self.state = state
