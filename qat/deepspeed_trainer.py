"""trainer=deepspeed: the training loop of qat.train through a DeepSpeed engine.

Data parallel over every process of the cell (torchrun, or srun with one task per GPU), ZeRO
stage 0–2, gradient accumulation and clipping; the DeepSpeed config is generated from the run
config (:func:`deepspeed_config`), never kept by hand. The science is the torch backend's:
``data.batch_size`` stays the global batch (split over ranks and micro-steps), bf16 is autocast
over fp32 master weights, and the loss curve matches trainer=torch on one device.

The FP→QAT switch: an engine fixes its parameter set at start-up, so a QAT cell builds its
QuantLinear layers (and their scales, in their own optimizer group) from the start, switched off.
At the switch the scales are initialised from the weights in the optimizer's fp32 copy, their Adam
state is reset (a fresh group, as in trainer=torch), and fake quantization is switched on.

Checkpoints are DeepSpeed's own (each rank writes its shard) inside our atomic layout: the engine
writes into ``.tmp-<tokens>/engine``, then rank 0 adds state.json, marks it COMPLETE and renames it.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

import torch

from qat import distributed, preemption
from qat.checkpoint import Checkpoint, commit_checkpoint, staging_dir
from qat.claim import CellBusy, Claim
from qat.config import RunConfig
from qat.data import DatasetInfo
from qat.distributed import DistInfo
from qat.errors import ConfigError, TrainingError
from qat.optim import SCALE_GROUP, add_scale_group, build_optimizer
from qat.quant import QuantLinear, init_scale, quant_parameters, quantize_model
from qat.tracking import Tracker
from qat.train import (
    RunResult,
    Trainer,
    check_backend,
    finished_result,
    load_data,
    train_and_track,
)

ENGINE_TAG = "engine"  # the DeepSpeed checkpoint's folder inside ours


def deepspeed_config(config: RunConfig, world_size: int, bf16: bool = False) -> dict[str, Any]:
    """The DeepSpeed JSON config of a run: the global batch split over ranks and micro-steps;
    ``bf16``: bf16 autocast over fp32 weights (the precision trainer=torch uses on a GPU)."""
    trainer = config.trainer
    global_batch = config.data.batch_size
    per_step = world_size * trainer.grad_accum
    if global_batch % per_step:
        raise ConfigError(
            f"data.batch_size={global_batch} does not split into {world_size} processes × "
            f"trainer.grad_accum={trainer.grad_accum} micro-batches; pick a multiple of {per_step}"
        )
    ds_config = {
        "train_batch_size": global_batch,
        "train_micro_batch_size_per_gpu": global_batch // per_step,
        "gradient_accumulation_steps": trainer.grad_accum,
        "gradient_clipping": config.optim.grad_clip,
        "zero_optimization": {"stage": trainer.zero_stage},
        # bf16 is torch.autocast over fp32 weights (as trainer=torch): DeepSpeed stays in fp32.
        "bf16": {"enabled": False},
        "fp16": {"enabled": False},
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }
    if bf16:
        # The engine switches off any autocast around its forward unless this section enables
        # it (measured: an H200 then trained the 86M model in fp32, 4.8x slower). No module is
        # marked lower-precision-safe, so gradients are still reduced in fp32.
        ds_config["torch_autocast"] = {
            "enabled": True,
            "dtype": "bfloat16",
            "lower_precision_safe_modules": [],
        }
    return ds_config


class DeepSpeedTrainer(Trainer):
    def __init__(
        self,
        config: RunConfig,
        data: DatasetInfo,
        checkpoint_dir: Path,
        dist: DistInfo,
        resume: Checkpoint | bool | None = True,
    ) -> None:
        self.dist = dist
        self.world_size = dist.world_size
        self.ds_config = deepspeed_config(config, dist.world_size)
        super().__init__(config, data, checkpoint_dir, resume)

    def _pick_device(self) -> torch.device:
        device = super()._pick_device()
        return torch.device("cuda", self.dist.local_rank) if device.type == "cuda" else device

    def _build_optimizer(self) -> torch.optim.Optimizer:
        optimizer = build_optimizer(self.model, self.config.optim)
        if not self.config.is_fp_only:
            quantize_model(
                self.model,
                self.config.bits,
                kernel=self.config.quant.kernel,
                exclude=self.config.quant.exclude,
            )
            for layer in self._quant_layers():
                layer.active = False
            add_scale_group(
                optimizer, quant_parameters(self.model), self.config.quant.scale_lr_mult
            )
        return optimizer

    def _wrap_model(self) -> Any:
        import deepspeed

        deepspeed.utils.logger.setLevel(logging.WARNING)
        bf16 = self.autocast_dtype == torch.bfloat16
        self.ds_config = deepspeed_config(self.config, self.world_size, bf16=bf16)
        engine, optimizer, _, _ = deepspeed.initialize(
            model=self.model, optimizer=self.optimizer, config=self.ds_config
        )
        self.engine = engine
        self.optimizer = optimizer
        return engine

    def _quant_layers(self) -> list[QuantLinear]:
        return [m for m in self.model.modules() if isinstance(m, QuantLinear)]

    def _train_step(self) -> torch.Tensor:
        x, y = self.loader.next_batch()  # the global batch: each rank takes its rows
        micro = self.ds_config["train_micro_batch_size_per_gpu"]
        total = torch.zeros((), device=self.device)
        for index in range(self.config.trainer.grad_accum):
            start = (index * self.world_size + self.dist.rank) * micro
            inputs = x[start : start + micro].to(self.device, non_blocking=True)
            targets = y[start : start + micro].to(self.device, non_blocking=True)
            with self._autocast():
                logits = self.engine(inputs)
                loss = torch.nn.functional.cross_entropy(
                    logits.flatten(0, 1).float(), targets.flatten()
                )
            self.engine.backward(loss)  # scaled by 1/grad_accum; averaged over ranks
            self.engine.step()  # an optimizer step at the last micro-step only
            total += loss.detach()
        return total / self.config.trainer.grad_accum

    def _quantize(self) -> None:
        """The QAT switch: scales from the current weights, fresh Adam state, fake-quant on."""
        from deepspeed.utils import safe_set_full_fp32_param

        for layer in self._quant_layers():
            scale = init_scale(layer.weight.detach().float(), layer.fmt)
            if getattr(layer.scale, "_hp_mapping", None) is not None:  # ZeRO's fp32 copy
                safe_set_full_fp32_param(layer.scale, scale)
            with torch.no_grad():
                layer.scale.copy_(scale)
            layer.active = True
        inner = getattr(self.optimizer, "optimizer", self.optimizer)
        for group in inner.param_groups:
            if group.get("name") == SCALE_GROUP:
                for param in group["params"]:
                    for value in inner.state.get(param, {}).values():
                        if isinstance(value, torch.Tensor):
                            value.zero_()
        self.quantized = True

    def _stop_requested(self) -> bool:
        # Any rank's signal stops every rank at the same step (checked at log steps only: an
        # all-reduce every step would cost a sync).
        if self.world_size == 1:
            return preemption.requested()
        if self.step % self.config.trainer.log_every:
            return False
        return self._reduce_sum([float(preemption.requested())])[0] > 0

    def _reduce_sum(self, values: list[float]) -> list[float]:
        return distributed.reduce_sum(values, self.dist, self.device)

    def _evaluates(self, batch_index: int) -> bool:
        return batch_index % self.world_size == self.dist.rank

    def _save(self, pinned: bool = False) -> Checkpoint | None:
        tokens = self.tokens_seen
        if self.dist.is_main:
            staging_dir(self.checkpoint_dir, tokens)
        distributed.barrier(self.dist)
        tmp = self.checkpoint_dir / f".tmp-{tokens}"
        self.engine.save_checkpoint(str(tmp), tag=ENGINE_TAG, save_latest=False)
        distributed.barrier(self.dist)
        saved = None
        if self.dist.is_main:
            state = {
                "step": self.step,
                "quantized": self.quantized,
                "fp_val_loss": self.fp_val_loss,
                "loader": self.loader.state_dict(),
                "pinned": pinned,
                "backend": "deepspeed",
                "world_size": self.world_size,
                "zero_stage": self.config.trainer.zero_stage,
            }
            saved = commit_checkpoint(tmp, tokens, state, self.config.trainer.keep_checkpoints)
        distributed.barrier(self.dist)
        return saved

    def load(self, checkpoint: Checkpoint) -> None:
        state = checkpoint.state()
        check_backend(checkpoint, state, "deepspeed")
        if state["quantized"] and not self.quantized:
            for layer in self._quant_layers():
                layer.active = True  # the scales come from the checkpoint
            self.quantized = True
        loaded, _ = self.engine.load_checkpoint(
            str(checkpoint.path), tag=ENGINE_TAG, load_lr_scheduler_states=False
        )
        if loaded is None:
            raise TrainingError(f"DeepSpeed could not load {checkpoint.path}/{ENGINE_TAG}")
        self.loader.load_state_dict(state["loader"])
        checkpoint.restore_rng()
        self.step = int(state["step"])
        self.fp_val_loss = state["fp_val_loss"]


def run_deepspeed(config: RunConfig) -> RunResult:
    """One cell trained by every process of the launch; rank 0 alone claims it and tracks it."""
    import os

    device_type = "cuda" if _wants_cuda(config) else "cpu"
    os.environ.setdefault("DS_ACCELERATOR", device_type)
    dist = distributed.setup(device_type)
    key = config.run_key
    run_dir = Path(config.run_dir) / key
    tracker: Tracker | None = None
    claim: Claim | None = None
    verdict: Any = "train"
    if dist.is_main:
        tracker = Tracker(config.tracking.uri, config.tracking.experiment)
        verdict = finished_result(config, tracker)
        if verdict is None:
            claim = Claim(run_dir)
            try:
                claim.acquire()
                verdict = "train"
            except CellBusy as busy:
                print(f"[{key}] {busy}: skipping")
                verdict = RunResult(key, "", True, float("nan"), None)
    verdict = distributed.broadcast(verdict, dist)
    if isinstance(verdict, RunResult):
        result = verdict
    else:
        try:
            trainer = DeepSpeedTrainer(config, load_data(config), run_dir / "checkpoints", dist)
            trainer.claim = claim
            if tracker is not None:
                result = train_and_track(trainer, tracker, run_dir)
            else:
                final, fp = trainer.train([])
                result = RunResult(key, "", False, final, fp)
        finally:
            if claim is not None:
                with contextlib.suppress(Exception):
                    claim.release()
    distributed.leave_together(dist)
    return result


def _wants_cuda(config: RunConfig) -> bool:
    device = config.trainer.device
    return device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
