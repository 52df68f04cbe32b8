"""What a shared full-precision trunk is: the key of the cells that share one, and the step at
which a cell branches from it. Storing trunks is qat.store.trunk_store's job; a pack forks its
own in memory (qat.engine.packed)."""

from __future__ import annotations

from dataclasses import asdict

from qat.config import RunConfig, data_science, run_key
from qat.schedule import LrSchedule, plan_phases, warmup_steps


def trunk_science(config: RunConfig) -> dict:
    """What shapes the stable FP phase: the trunk key's input."""
    optim = asdict(config.optim)
    optim.pop("qat_reset_moments")  # acts at the QAT switch, after the branch point
    tokens_per_step = config.data.batch_size * config.data.seq_len
    return {
        "model": asdict(config.model),
        "data": data_science(config.data),
        "optim": optim,
        "warmup_steps": warmup_steps(config.schedule, tokens_per_step),
        "seed": config.seed,
        "precision": config.trainer.precision,
    }


def trunk_key(config: RunConfig) -> str:
    return run_key(trunk_science(config))


def branch_step(config: RunConfig) -> int:
    """The number of steps this cell can take from its trunk (0: nothing to share)."""
    return LrSchedule(plan_phases(config), config.schedule).stable_until()
