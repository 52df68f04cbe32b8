"""The dtype each Linear layer computes in inside a DeepSpeed engine's forward.

Run as ``python -m tests.integration.engine_probe OVERRIDE...`` in a process of its own: it joins
a process group of one, which must not outlive it (a pytest process holding one would hand its
rank and port to every train.py it starts). For trainer.precision=bf16 and then fp32 it builds the
engine as ``train.py trainer=deepspeed`` does (DeepSpeedTrainer), takes one optimizer step through
it, and prints ``{precision: {layer: [output dtypes]}}`` as JSON on its last line.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from torch import nn

from qat import distributed
from qat.config import RunConfig
from qat.deepspeed_trainer import DeepSpeedTrainer
from qat.quant import QuantLinear
from qat.train import load_data

REPO = Path(__file__).resolve().parents[2]
PRECISIONS = ("bf16", "fp32")


def run_config(overrides: Sequence[str]) -> RunConfig:
    """The run config ``train.py OVERRIDE...`` would train."""
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=list(overrides))
    tree: Any = OmegaConf.to_container(cfg, resolve=True)
    return RunConfig.from_dict(tree)


def linear_output_dtypes(
    config: RunConfig, checkpoint_dir: Path, dist: distributed.DistInfo
) -> dict[str, list[str]]:
    """The dtypes every Linear layer returned during one optimizer step through the engine."""
    trainer = DeepSpeedTrainer(config, load_data(config), checkpoint_dir, dist, resume=None)
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
    trainer.advance(1, lambda step: 1.0, [])
    return {name: sorted(dtypes) for name, dtypes in seen.items()}


def main(overrides: Sequence[str]) -> None:
    configs = {p: run_config([*overrides, f"trainer.precision={p}"]) for p in PRECISIONS}
    wants_cuda = configs["bf16"].trainer.device != "cpu" and torch.cuda.is_available()
    device_type = "cuda" if wants_cuda else "cpu"
    os.environ.setdefault("DS_ACCELERATOR", device_type)  # as qat.deepspeed_trainer does
    dist = distributed.setup(device_type)
    with tempfile.TemporaryDirectory() as tmp:
        dtypes = {
            p: linear_output_dtypes(config, Path(tmp) / p, dist) for p, config in configs.items()
        }
    print(json.dumps(dtypes), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
