"""The trainer's own state: what a checkpoint's state.json holds besides weights and moments."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from qat.checkpoint import Checkpoint
from qat.errors import TrainingError


@dataclass
class TrainState:
    step: int = 0  # optimizer steps taken
    quantized: bool = False  # past the QAT switch
    fp_val_loss: float | None = None  # validation loss at the end of the FP phase
    loader: dict[str, Any] = field(default_factory=dict)  # the data cursor

    def to_json(self, backend: str, pinned: bool) -> dict[str, Any]:
        return {
            "step": self.step,
            "quantized": self.quantized,
            "fp_val_loss": self.fp_val_loss,
            "loader": self.loader,
            "pinned": pinned,
            "backend": backend,
        }

    @classmethod
    def from_checkpoint(cls, checkpoint: Checkpoint, backend: str) -> TrainState:
        """The state saved in ``checkpoint``, refused if another backend wrote it."""
        saved = checkpoint.state()
        written_by = saved.get("backend", "torch")
        if written_by != backend:
            raise TrainingError(
                f"checkpoint {checkpoint.path} was written by trainer={written_by}, not "
                f"{backend}: resume with trainer={written_by}, or move the run folder away to "
                "start over"
            )
        return cls(
            step=int(saved["step"]),
            quantized=bool(saved["quantized"]),
            fp_val_loss=saved["fp_val_loss"],
            loader=saved["loader"],
        )
