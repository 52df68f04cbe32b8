"""The training loop: one readable path from a validated config to a FINISHED MLflow run.

Trunk (shared FP prefix, see qat.trunk) → FP phase → QAT switch (FP eval, checkpoint, Linear →
QuantLinear) → QAT phase → quantized eval. A run resumes from the newest complete checkpoint of
its run key without being asked.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from qat import preemption
from qat.checkpoint import Checkpoint, latest_checkpoint, save_checkpoint
from qat.claim import CellBusy, Claim
from qat.config import RunConfig, flatten
from qat.data import DatasetInfo, TokenLoader, default_data_dir, eval_batches, prepare
from qat.errors import ConfigError, TrainingError
from qat.model import Transformer, count_parameters
from qat.optim import add_scale_group, build_optimizer, set_learning_rate
from qat.quant import quant_parameters, quantize_model
from qat.schedule import LrSchedule, PhasePlan, plan_phases, warmup_multiplier, warmup_steps
from qat.tracking import FINAL_METRIC, JsonlSink, MetricSink, MlflowSink, Tracker
from qat.trunk import TrunkStore, branch_step


@dataclass(frozen=True)
class RunResult:
    run_key: str
    run_id: str
    skipped: bool
    final_val_loss: float
    fp_val_loss: float | None


def run(config: RunConfig) -> RunResult:
    """Train one grid cell to completion (or skip it if its key is already FINISHED)."""
    if config.trainer.backend == "deepspeed":
        from qat.deepspeed_trainer import run_deepspeed

        return run_deepspeed(config)
    refuse_several_processes()
    tracker = Tracker(config.tracking.uri, config.tracking.experiment)
    done = finished_result(config, tracker)
    if done is not None:
        return done
    run_dir = Path(config.run_dir) / config.run_key
    claim = Claim(run_dir)
    try:
        claim.acquire()
    except CellBusy as busy:
        print(f"[{config.run_key}] {busy}: skipping")
        return RunResult(config.run_key, "", True, float("nan"), None)
    try:
        trainer = Trainer(config, load_data(config), run_dir / "checkpoints")
        trainer.claim = claim
        return train_and_track(trainer, tracker, run_dir)
    finally:
        claim.release()


def finished_result(config: RunConfig, tracker: Tracker) -> RunResult | None:
    """The cell's result if its run key is already FINISHED in the store, else None."""
    key = config.run_key
    finished = tracker.finished_run(key)
    if finished is None:
        return None
    print(f"[{key}] already FINISHED as MLflow run {finished.info.run_id}: skipping")
    metrics = finished.data.metrics
    return RunResult(
        key, finished.info.run_id, True, metrics[FINAL_METRIC], metrics.get("fp/val_loss")
    )


def refuse_several_processes() -> None:
    import os

    world = int(os.environ.get("WORLD_SIZE", os.environ.get("SLURM_NTASKS", "1")))
    if world > 1:
        # The torch backend trains a cell in one process; several would train it twice.
        raise ConfigError(
            f"{world} processes were launched but trainer=torch runs one process per cell: "
            "use trainer=deepspeed, or launch one process (SLURM: tasks_per_node=1, nodes=1)"
        )


def train_and_track(trainer: Trainer, tracker: Tracker, run_dir: Path) -> RunResult:
    """Train a claimed cell, logging to MLflow and metrics.jsonl; the MLflow run ends FINISHED
    only when training ended, FAILED on an error, KILLED on Ctrl-C or a requeue."""
    config = trainer.config
    key = config.run_key
    id_file = run_dir / "mlflow_run_id"
    hint = id_file.read_text().strip() if id_file.exists() else None
    run_id = tracker.open_run(key, _run_name(config), hint)
    id_file.write_text(run_id)
    try:
        _log_setup(tracker, run_id, config, trainer, run_dir)
        sinks: list[MetricSink] = [
            MlflowSink(tracker, run_id),
            JsonlSink(run_dir / "metrics.jsonl"),
        ]
        try:
            if trainer.step == 0 and config.trunk == "share":
                _branch_from_trunk(config, trainer, tracker, run_id, sinks)
            final, fp = trainer.train(sinks)
        finally:
            for sink in sinks:
                sink.close()
    except (KeyboardInterrupt, SystemExit):  # Ctrl-C, or a requeue after preemption
        with contextlib.suppress(Exception):
            tracker.end(run_id, "KILLED")
        raise
    except BaseException:
        # Marked FAILED (not FINISHED): a rerun resumes from the newest checkpoint.
        with contextlib.suppress(Exception):
            tracker.end(run_id, "FAILED")
        raise
    tracker.end(run_id, "FINISHED")
    return RunResult(key, run_id, False, final, fp)


def load_data(config: RunConfig) -> DatasetInfo:
    data = config.data
    out_dir = Path(data.cache_dir) if data.cache_dir else None
    return prepare(
        data.source,
        out_dir or default_data_dir(data.source, data.vocab_size),
        vocab_size=data.vocab_size,
        val_fraction=data.val_fraction,
    )


def train_trunk(config: RunConfig, store: TrunkStore, until: int) -> None:
    """Extend the FP trunk of ``config`` to ``until`` steps (caller holds the trunk lock)."""
    start = store.latest_before(until)
    trainer = Trainer(config, load_data(config), store.checkpoint_dir, resume=start)
    sink = JsonlSink(store.dir / "metrics.jsonl")
    print(f"[trunk {store.key}] training steps {trainer.step}..{until}", flush=True)
    warmup = warmup_steps(config.schedule, trainer.plan.tokens_per_step)
    try:
        trainer.advance(
            until,
            lambda step: warmup_multiplier(step, warmup),
            [sink],
            pinned_steps=store.wanted(),
        )
    finally:
        sink.close()


def _branch_from_trunk(
    config: RunConfig, trainer: Trainer, tracker: Tracker, run_id: str, sinks: list[MetricSink]
) -> None:
    step = branch_step(config)
    if step <= 0:
        return  # the cell leaves the stable phase at once: nothing to share
    store = TrunkStore(config)
    checkpoint = store.ensure(config, step)
    trainer.load(checkpoint)
    tracker.set_tag(run_id, "trunk_key", store.key)
    tracker.set_tag(run_id, "branch_tokens", str(checkpoint.tokens))
    for record in store.metrics_until(checkpoint.tokens):  # the shared prefix of the curve
        metrics = {k: v for k, v in record.items() if k.startswith("train/")}
        for sink in sinks:
            sink.log(metrics, record["tokens"])
    print(f"[{config.run_key}] branched from trunk {store.key} at {checkpoint.tokens} tokens")


class _Window:
    """Loss and speed since the last log (summed on the device: no sync every step)."""

    def __init__(self, device: torch.device) -> None:
        self.loss = torch.zeros((), device=device)
        self.steps = 0
        self.start = time.perf_counter()

    def add(self, loss: torch.Tensor) -> None:
        self.loss += loss
        self.steps += 1

    def flush(self, tokens_per_step: int) -> tuple[float, float]:
        mean = (self.loss / self.steps).item()
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
        resume: Checkpoint | bool | None = True,
    ) -> None:
        """``resume``: True = the newest checkpoint in ``checkpoint_dir``; or one; or None."""
        self.config = config
        self.checkpoint_dir = checkpoint_dir
        self.device = self._pick_device()
        self.autocast_dtype = _autocast_dtype(config.trainer.precision, self.device)
        self.plan: PhasePlan = plan_phases(config)
        self.schedule = LrSchedule(self.plan, config.schedule)
        self.data = data
        torch.manual_seed(config.seed)
        self.model = Transformer(config.model, data.vocab_size).to(self.device)
        self.n_params, self.n_params_total = count_parameters(self.model)
        self.optimizer = self._build_optimizer()
        self.loader = TokenLoader(
            data.train_path, config.data.batch_size, config.data.seq_len, config.seed
        )
        self.step = 0
        self.quantized = False
        self.fp_val_loss: float | None = None
        self.claim: Claim | None = None  # refreshed while training, so that it stays live
        if config.trainer.compile and not config.is_fp_only and self.device.type == "cuda":
            from qat.quant import resolve_kernel

            if resolve_kernel(config.quant.kernel, self.device) == "reference":
                # Measured on an H100 with torch 2.11: the compiled reference autograd Function
                # gave every quantized weight a zero gradient. The CUDA kernel's op is correct.
                raise ConfigError(
                    "trainer.compile=true with the reference fake-quant on a GPU trains wrongly; "
                    "use quant.kernel=cuda (needs nvcc) or trainer.compile=false"
                )
        self.step_fn = self._wrap_model()
        if resume is True:
            resume = latest_checkpoint(checkpoint_dir)
        if isinstance(resume, Checkpoint):
            self.load(resume)
            print(f"[{config.run_key}] resuming from {resume.path} (step {self.step})")

    # Hooks that trainer=deepspeed overrides (qat.deepspeed_trainer).
    def _pick_device(self) -> torch.device:
        return _resolve_device(self.config.trainer.device)

    def _build_optimizer(self) -> torch.optim.Optimizer:
        return build_optimizer(self.model, self.config.optim)

    def _wrap_model(self) -> Callable[[torch.Tensor], torch.Tensor]:
        return torch.compile(self.model) if self.config.trainer.compile else self.model

    def _stop_requested(self) -> bool:
        return preemption.requested()

    world_size = 1  # processes training this cell together

    def _reduce_sum(self, values: list[float]) -> list[float]:
        """Sum ``values`` over all processes of the cell (one process: as they are)."""
        return values

    def _evaluates(self, batch_index: int) -> bool:
        """Whether this process evaluates validation batch ``batch_index``."""
        return True

    @property
    def tokens_seen(self) -> int:
        return self.step * self.plan.tokens_per_step

    def train(self, sinks: list[MetricSink]) -> tuple[float, float | None]:
        """Train the cell to its end; returns (final/val_loss, fp/val_loss)."""
        plan = self.plan
        if self.fp_val_loss is not None:  # resumed after the switch: the log may have missed it
            _log(sinks, {"fp/val_loss": self.fp_val_loss}, plan.tokens_fp)
        if self.step < plan.fp_steps:
            self.advance(plan.fp_steps, self.schedule, sinks)
        if plan.quantized and not self.quantized:  # also for qat_frac = 0: quantize the FP model
            self._switch_to_qat(sinks)
        self.advance(plan.total_steps, self.schedule, sinks)
        final = self.evaluate()
        if not plan.quantized:
            self.fp_val_loss = final
            _log(sinks, {"fp/val_loss": final}, self.tokens_seen)
        _log(sinks, {FINAL_METRIC: final}, self.tokens_seen)
        return final, self.fp_val_loss

    def advance(
        self,
        until: int,
        lr_multiplier: Callable[[int], float],
        sinks: list[MetricSink],
        pinned_steps: set[int] = frozenset(),  # type: ignore[assignment]
    ) -> None:
        """Take optimizer steps up to ``until``, logging and checkpointing on the way."""
        interval = max(1, math.ceil(self.config.trainer.ckpt_every_frac * self.plan.total_steps))
        progress = _progress_bar(self.plan.total_steps, self.step, self.config.trainer.progress)
        window = _Window(self.device)
        with preemption.training_loop():
            while self.step < until:
                multiplier = lr_multiplier(self.step)
                lr = set_learning_rate(self.optimizer, self.config.optim.lr, multiplier)
                window.add(self._train_step())
                self.step += 1
                progress.update(1)
                pinned = self.step in pinned_steps
                periodic = self.step % interval == 0 and self.step < self.plan.total_steps
                if (
                    self.step % self.config.trainer.log_every == 0
                    or periodic
                    or pinned
                    or (self.step == until)
                ):
                    self._log_window(window, lr, sinks, progress)
                if periodic or pinned:
                    self._save(pinned=pinned)
                if self._stop_requested():  # SLURM asked us to stop: save, then let it requeue
                    self._save(pinned=pinned)
                    preemption.hand_over()
        progress.close()

    def _log_window(
        self, window: _Window, lr: float, sinks: list[MetricSink], progress: Any
    ) -> None:
        mean_loss, speed = window.flush(self.plan.tokens_per_step)
        mean_loss = self._reduce_sum([mean_loss])[0] / self.world_size
        if not math.isfinite(mean_loss):
            raise TrainingError(
                f"training loss is {mean_loss} at step {self.step} "
                f"({self.tokens_seen} tokens); lower optim.lr or check the data"
            )
        metrics = {"train/loss": mean_loss, "train/lr": lr, "train/tokens_per_s": speed}
        _log(sinks, metrics, self.tokens_seen)
        phase = "qat" if self.quantized else "fp"
        progress.set_postfix(loss=f"{mean_loss:.3f}", tok_s=f"{speed:,.0f}", phase=phase)
        if self.claim is not None:
            self.claim.refresh()

    def _train_step(self) -> torch.Tensor:
        x, y = (t.to(self.device, non_blocking=True) for t in self.loader.next_batch())
        with self._autocast():
            logits = self.step_fn(x)
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
        loss.backward()
        if self.config.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.optim.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    def _switch_to_qat(self, sinks: list[MetricSink]) -> None:
        """End of the FP phase: evaluate, checkpoint the FP state, swap in QuantLinear."""
        if self.fp_val_loss is None:
            self.fp_val_loss = self.evaluate()
            _log(sinks, {"fp/val_loss": self.fp_val_loss}, self.tokens_seen)
        if not (self.checkpoint_dir / str(self.tokens_seen)).exists():
            self._save(pinned=True)  # the FP model at the switch: worth keeping
        self._quantize()

    def _quantize(self) -> None:
        quantize_model(
            self.model,
            self.config.bits,
            kernel=self.config.quant.kernel,
            exclude=self.config.quant.exclude,
        )
        add_scale_group(
            self.optimizer, quant_parameters(self.model), self.config.quant.scale_lr_mult
        )
        self.quantized = True

    @torch.no_grad()
    def evaluate(self) -> float:
        data = self.config.data
        total, count = 0.0, 0
        self.model.eval()
        batches = eval_batches(self.data.val_path, data.batch_size, data.seq_len, data.eval_tokens)
        for index, (x, y) in enumerate(batches):
            if not self._evaluates(index):
                continue
            with self._autocast():
                logits = self.step_fn(x.to(self.device))
            loss = torch.nn.functional.cross_entropy(
                logits.flatten(0, 1).float(), y.to(self.device).flatten(), reduction="sum"
            )
            total += loss.item()
            count += y.numel()
        self.model.train()
        total, count = self._reduce_sum([total, float(count)])
        value = total / count
        if not math.isfinite(value):
            raise TrainingError(f"validation loss is {value} at {self.tokens_seen} tokens")
        return value

    def _autocast(self) -> contextlib.AbstractContextManager[None]:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _save(self, pinned: bool = False) -> Checkpoint | None:
        if global_rank() != 0:
            return None  # only rank 0 writes: other ranks hold the same state
        state = {
            "step": self.step,
            "quantized": self.quantized,
            "fp_val_loss": self.fp_val_loss,
            "loader": self.loader.state_dict(),
            "pinned": pinned,
            "backend": "torch",
        }
        return save_checkpoint(
            self.checkpoint_dir,
            self.tokens_seen,
            self.model,
            self.optimizer,
            state,
            keep=self.config.trainer.keep_checkpoints,
        )

    def load(self, checkpoint: Checkpoint) -> None:
        state = checkpoint.state()
        check_backend(checkpoint, state, "torch")
        if state["quantized"] and not self.quantized:
            self._quantize()
        self.model.load_state_dict(checkpoint.model_state())
        self.optimizer.load_state_dict(checkpoint.optimizer_state())
        self.loader.load_state_dict(state["loader"])
        checkpoint.restore_rng()
        self.step = int(state["step"])
        self.fp_val_loss = state["fp_val_loss"]


def check_backend(checkpoint: Checkpoint, state: dict[str, Any], backend: str) -> None:
    written_by = state.get("backend", "torch")
    if written_by != backend:
        raise TrainingError(
            f"checkpoint {checkpoint.path} was written by trainer={written_by}, not {backend}: "
            f"resume with trainer={written_by}, or move the run folder away to start over"
        )


def global_rank() -> int:
    import os

    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")))


def _log_setup(
    tracker: Tracker, run_id: str, config: RunConfig, trainer: Trainer, run_dir: Path
) -> None:
    import yaml

    plan = trainer.plan
    params = flatten(config.to_dict())
    params.update(
        run_key=config.run_key,
        n_params=trainer.n_params,
        n_params_total=trainer.n_params_total,
        tokens_fp=plan.tokens_fp,
        tokens_qat=plan.tokens_qat,
        tokens_total=plan.tokens_total,
        data_fingerprint=trainer.data.fingerprint,
        world_size=trainer.world_size,
    )
    tracker.log_params(run_id, params)
    config_path = run_dir / "config.yaml"
    config_path.write_text(yaml.safe_dump(_plain(config.to_dict()), sort_keys=False))
    tracker.log_artifact(run_id, config_path)


def _plain(value: object) -> object:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _log(sinks: list[MetricSink], metrics: dict[str, float], step: int) -> None:
    for sink in sinks:
        sink.log(metrics, step)


def _run_name(config: RunConfig) -> str:
    bits = "fp" if config.is_fp_only else f"b{config.bits:g}"
    fusion = "-fused" if config.fusion and not config.is_fp_only else ""
    return f"{config.model.name}-{bits}-f{config.qat_frac:g}{fusion}-t{config.tokens:.3g}"


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TrainingError(f"trainer.device={name} but no CUDA GPU is visible; use device=cpu")
    return torch.device(name)


def _autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def _progress_bar(total: int, start: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        initial=start,
        unit="step",
        disable=not enabled,
        dynamic_ncols=True,
        mininterval=1.0,
    )
