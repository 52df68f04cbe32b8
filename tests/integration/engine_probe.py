"""The dtype each Linear layer computes in inside a DeepSpeed engine's forward.

Run as ``python -m tests.integration.engine_probe OVERRIDE...`` in a process of its own: it joins
a process group of one, which must not outlive it (a pytest process holding one would hand its
rank and port to every train.py it starts). For trainer.precision=bf16 and then fp32 it builds the
engine as ``train.py trainer=deepspeed`` does (a Trainer on the DeepSpeed backend), takes one
optimizer step through it, and prints ``{precision: {layer: [output dtypes]}}`` as JSON on its
last line.
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from torch import nn

from qat.cell import load_data
from qat.config import RunConfig
from qat.engine import Backend, Trainer, make_backend
from qat.quant import QuantLinear

REPO = Path(__file__).resolve().parents[2]
PRECISIONS = ("bf16", "fp32")


def run_config(overrides: Sequence[str]) -> RunConfig:
    """The run config ``train.py OVERRIDE...`` would train."""
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=list(overrides))
    tree: Any = OmegaConf.to_container(cfg, resolve=True)
    return RunConfig.from_dict(tree)


def linear_output_dtypes(
    config: RunConfig, checkpoint_dir: Path, backend: Backend
) -> dict[str, list[str]]:
    """The dtypes every Linear layer returned during one optimizer step through the engine."""
    trainer = Trainer(config, load_data(config), checkpoint_dir, backend, resume=None)
    seen: dict[str, set[str]] = {}

    def recorder(name: str) -> Any:
        def hook(module: nn.Module, args: Any, output: torch.Tensor) -> None:
            seen.setdefault(name, set()).add(str(output.dtype))

        return hook

    for name, module in trainer.model.named_modules():
        if isinstance(module, nn.Linear | QuantLinear):
            module.register_forward_hook(recorder(name))
    # advance() is the training loop itself: the step runs under the trainer's autocast and
    # through the engine's forward, which may open or close an autocast of its own.
    trainer.advance(1, lambda step: 1.0, lambda metrics, tokens: None)
    return {name: sorted(dtypes) for name, dtypes in seen.items()}


def main(overrides: Sequence[str]) -> None:
    configs = {p: run_config([*overrides, f"trainer.precision={p}"]) for p in PRECISIONS}
    with tempfile.TemporaryDirectory() as tmp:
        # A backend each: the engine is built from the precision (its torch_autocast section).
        dtypes = {
            p: linear_output_dtypes(config, Path(tmp) / p, make_backend(config))
            for p, config in configs.items()
        }
    print(json.dumps(dtypes), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
