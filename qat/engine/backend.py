"""What varies between ways of training a cell, behind one small protocol.

The Trainer (qat.engine.trainer) owns the science: model, optimizer, schedule, data cursor, the
QAT switch, evaluation and its state. A Backend owns how a step runs and where state goes: the
device, the processes of the cell, the optimizer step, collectives and checkpoint files.
:func:`qat.engine.factory.make_backend` picks one from ``trainer.backend``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from qat.checkpoint import Checkpoint
from qat.config import RunConfig
from qat.errors import TrainingError

Forward = Callable[[torch.Tensor], torch.Tensor]
Batch = tuple[torch.Tensor, torch.Tensor]


class Backend(Protocol):
    name: str  # the trainer.backend value; checkpoints record it
    device: torch.device
    world_size: int  # processes training this cell together
    is_main: bool  # the process that claims, tracks and writes shared files
    # True when the engine fixes the parameter set at start-up: QAT layers are then built
    # before it starts, switched off (see qat.engine.qat_switch).
    fixed_parameters: bool

    def wrap(
        self, model: nn.Module, optimizer: torch.optim.Optimizer
    ) -> tuple[Forward, torch.optim.Optimizer]:
        """The forward to call and the optimizer to step, once model and optimizer exist."""
        ...

    def train_step(self, batch: Batch, loss_of: Callable[[Batch], torch.Tensor]) -> torch.Tensor:
        """One optimizer step on the global ``batch``; ``loss_of`` computes a (micro-)batch's
        mean loss under the run's autocast. Returns the step's mean loss (detached)."""
        ...

    def write_param(self, param: nn.Parameter, value: torch.Tensor) -> None: ...

    def reduce_sum(self, values: list[float]) -> list[float]:
        """``values`` summed over the cell's processes."""
        ...

    def evaluates(self, batch_index: int) -> bool:
        """Whether this process evaluates validation batch ``batch_index``."""
        ...

    def stop_requested(self, step: int) -> bool:
        """Whether the launcher asked the cell to stop (a SLURM requeue), agreed by all ranks."""
        ...

    def broadcast(self, value: object) -> object:
        """The main process's ``value`` on every process."""
        ...

    def save(
        self,
        checkpoint_dir: Path,
        tokens: int,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        state: dict[str, Any],
        keep: int,
    ) -> Checkpoint | None: ...

    def load(
        self, checkpoint: Checkpoint, model: nn.Module, optimizer: torch.optim.Optimizer
    ) -> None:
        """Weights and optimizer state from ``checkpoint`` (the caller restores the rest)."""
        ...

    def finish(self) -> None:
        """The cell's last word: every process leaves together."""
        ...


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TrainingError(f"trainer.device={name} but no CUDA GPU is visible; use device=cpu")
    return torch.device(name)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype a run trains in (None: fp32)."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def effective_precision(config: RunConfig, device: torch.device) -> str:
    """fp32 or bf16: what trainer.precision means on ``device``."""
    return "bf16" if autocast_dtype(config.trainer.precision, device) else "fp32"
