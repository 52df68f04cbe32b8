"""trainer=deepspeed: the cell's step through a DeepSpeed engine.

Data parallel over every process of the cell (torchrun, or srun with one task per GPU), ZeRO
stage 0–2, gradient accumulation and clipping; the DeepSpeed config is generated from the run
config (:func:`deepspeed_config`), never kept by hand. The science is the torch backend's:
``data.batch_size`` stays the global batch (split over ranks and micro-steps), bf16 is autocast
over fp32 master weights, and the loss curve matches trainer=torch on one device.

An engine fixes its parameter set at start-up, so a QAT cell's QuantLinear layers are built
before it starts, switched off (``fixed_parameters``; the switch itself is qat.engine.qat_switch).

Checkpoints are DeepSpeed's own (each rank writes its shard) inside our atomic layout: the engine
writes into ``.tmp-<tokens>/engine``, then rank 0 adds state.json, marks it COMPLETE and renames it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qat import distributed, preemption
from qat.checkpoint import Checkpoint, commit_checkpoint, staging_dir
from qat.config import RunConfig
from qat.engine.backend import Batch, Forward, autocast_dtype, resolve_device
from qat.errors import ConfigError, TrainingError

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


class DeepSpeedBackend:
    name = "deepspeed"
    fixed_parameters = True

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        device = resolve_device(config.trainer.device)
        os.environ.setdefault("DS_ACCELERATOR", device.type)
        self.dist = distributed.setup(device.type)
        self.world_size = self.dist.world_size
        self.is_main = self.dist.is_main
        self.device = (
            torch.device("cuda", self.dist.local_rank) if device.type == "cuda" else device
        )
        bf16 = autocast_dtype(config.trainer.precision, self.device) == torch.bfloat16
        self.ds_config = deepspeed_config(config, self.world_size, bf16=bf16)
        self.engine: Any = None

    def wrap(
        self, model: nn.Module, optimizer: torch.optim.Optimizer
    ) -> tuple[Forward, torch.optim.Optimizer]:
        import deepspeed

        deepspeed.utils.logger.setLevel(logging.WARNING)
        engine, wrapped, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, config=self.ds_config
        )
        self.engine = engine
        return engine, wrapped

    def train_step(self, batch: Batch, loss_of: Callable[[Batch], torch.Tensor]) -> torch.Tensor:
        x, y = batch  # the global batch: each rank takes its rows
        micro = self.ds_config["train_micro_batch_size_per_gpu"]
        accum = self.config.trainer.grad_accum
        total = torch.zeros((), device=self.device)
        for index in range(accum):
            start = (index * self.world_size + self.dist.rank) * micro
            inputs = x[start : start + micro].to(self.device, non_blocking=True)
            targets = y[start : start + micro].to(self.device, non_blocking=True)
            loss = loss_of((inputs, targets))
            self.engine.backward(loss)  # scaled by 1/grad_accum; averaged over ranks
            self.engine.step()  # an optimizer step at the last micro-step only
            total += loss.detach()
        return total / accum

    def write_param(self, param: nn.Parameter, value: torch.Tensor) -> None:
        from deepspeed.utils import safe_set_full_fp32_param

        if getattr(param, "_hp_mapping", None) is not None:  # ZeRO's fp32 copy
            safe_set_full_fp32_param(param, value)
        with torch.no_grad():
            param.copy_(value)

    def reduce_sum(self, values: list[float]) -> list[float]:
        return distributed.reduce_sum(values, self.dist, self.device)

    def evaluates(self, batch_index: int) -> bool:
        return batch_index % self.world_size == self.dist.rank

    def stop_requested(self, step: int) -> bool:
        # Any rank's signal stops every rank at the same step (checked at log steps only: an
        # all-reduce every step would cost a sync).
        if self.world_size == 1:
            return preemption.requested()
        if step % self.config.trainer.log_every:
            return False
        return self.reduce_sum([float(preemption.requested())])[0] > 0

    def broadcast(self, value: object) -> object:
        return distributed.broadcast(value, self.dist)

    def save(
        self,
        checkpoint_dir: Path,
        tokens: int,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        state: dict[str, Any],
        keep: int,
    ) -> Checkpoint | None:
        if self.is_main:
            staging_dir(checkpoint_dir, tokens)
        distributed.barrier(self.dist)
        tmp = checkpoint_dir / f".tmp-{tokens}"
        self.engine.save_checkpoint(str(tmp), tag=ENGINE_TAG, save_latest=False)
        distributed.barrier(self.dist)
        saved = None
        if self.is_main:
            state = {
                **state,
                "world_size": self.world_size,
                "zero_stage": self.config.trainer.zero_stage,
            }
            saved = commit_checkpoint(tmp, tokens, state, keep)
        distributed.barrier(self.dist)
        return saved

    def load(
        self, checkpoint: Checkpoint, model: nn.Module, optimizer: torch.optim.Optimizer
    ) -> None:
        loaded, _ = self.engine.load_checkpoint(
            str(checkpoint.path), tag=ENGINE_TAG, load_lr_scheduler_states=False
        )
        if loaded is None:
            raise TrainingError(f"DeepSpeed could not load {checkpoint.path}/{ENGINE_TAG}")

    def finish(self) -> None:
        distributed.leave_together(self.dist)
