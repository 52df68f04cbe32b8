"""trainer=torch: one process, one device, the plain PyTorch step."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qat import preemption
from qat.checkpoint import Checkpoint, save_checkpoint
from qat.config import RunConfig
from qat.engine.backend import Batch, Forward, resolve_device
from qat.engine.qat_switch import write_in_place
from qat.errors import ConfigError


class TorchBackend:
    name = "torch"
    world_size = 1
    is_main = True
    fixed_parameters = False

    def __init__(self, config: RunConfig) -> None:
        refuse_several_processes()
        self.config = config
        self.device = resolve_device(config.trainer.device)
        self._model: nn.Module | None = None
        self._optimizer: torch.optim.Optimizer | None = None

    def wrap(
        self, model: nn.Module, optimizer: torch.optim.Optimizer
    ) -> tuple[Forward, torch.optim.Optimizer]:
        self._model, self._optimizer = model, optimizer
        forward = torch.compile(model) if self.config.trainer.compile else model
        return forward, optimizer

    def train_step(self, batch: Batch, loss_of: Callable[[Batch], torch.Tensor]) -> torch.Tensor:
        assert self._model is not None and self._optimizer is not None, "wrap() first"
        x, y = (t.to(self.device, non_blocking=True) for t in batch)
        loss = loss_of((x, y))
        loss.backward()
        if self.config.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self._model.parameters(), self.config.optim.grad_clip)
        self._optimizer.step()
        self._optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    def write_param(self, param: nn.Parameter, value: torch.Tensor) -> None:
        write_in_place(param, value)

    def reduce_sum(self, values: list[float]) -> list[float]:
        return values

    def evaluates(self, batch_index: int) -> bool:
        return True

    def stop_requested(self, step: int) -> bool:
        return preemption.requested()

    def broadcast(self, value: object) -> object:
        return value

    def save(
        self,
        checkpoint_dir: Path,
        tokens: int,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        state: dict[str, Any],
        keep: int,
    ) -> Checkpoint | None:
        return save_checkpoint(checkpoint_dir, tokens, model, optimizer, state, keep=keep)

    def load(
        self, checkpoint: Checkpoint, model: nn.Module, optimizer: torch.optim.Optimizer
    ) -> None:
        model.load_state_dict(checkpoint.model_state())
        optimizer.load_state_dict(checkpoint.optimizer_state())

    def finish(self) -> None:
        pass


def refuse_several_processes() -> None:
    world = int(os.environ.get("WORLD_SIZE", os.environ.get("SLURM_NTASKS", "1")))
    if world > 1:
        # The torch backend trains a cell in one process; several would train it twice.
        raise ConfigError(
            f"{world} processes were launched but trainer=torch runs one process per cell: "
            "use trainer=deepspeed, or launch one process (SLURM: tasks_per_node=1, nodes=1)"
        )
