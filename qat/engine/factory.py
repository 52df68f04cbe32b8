"""The backend a run asks for (``trainer.backend``); each is imported only when chosen, so a
torch run never loads DeepSpeed."""

from __future__ import annotations

from qat.config import RunConfig
from qat.engine.backend import Backend
from qat.errors import ConfigError


def make_backend(config: RunConfig) -> Backend:
    backend = config.trainer.backend
    if backend == "torch":
        from qat.engine.torch_backend import TorchBackend

        return TorchBackend(config)
    if backend == "deepspeed":
        from qat.engine.deepspeed_backend import DeepSpeedBackend

        return DeepSpeedBackend(config)
    raise ConfigError(f"trainer.backend={backend!r} is one of: torch, deepspeed")
