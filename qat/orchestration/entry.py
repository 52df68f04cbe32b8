"""From a Hydra config to a finished run, turning every user-facing failure into one line."""

from __future__ import annotations

import sys
from typing import Any, cast

from omegaconf import DictConfig, OmegaConf

from qat.cell import RunResult
from qat.config import RunConfig
from qat.errors import ConfigError, QatError, TrainingError

# Cells of this process's multirun that failed; GridCallback reports them at the end.
FAILED_CELLS: list[str] = []
# trainer=packed multiruns: each cell's outcome (a result, or its error) once its pack has run.
PACKED_RESULTS: dict[str, RunResult | TrainingError] = {}


def run_from_hydra(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig

    # mode is Optional in HydraConf's schema but always set once Hydra runs a job.
    multirun = HydraConfig.initialized() and HydraConfig.get().mode.name == "MULTIRUN"  # type: ignore[union-attr]
    overrides = " ".join(HydraConfig.get().overrides.task) if HydraConfig.initialized() else ""
    try:
        configure_slurm_job()
        config = RunConfig.from_dict(
            cast("dict[str, Any]", OmegaConf.to_container(cfg, resolve=True))
        )
        result = _run(config)
    except QatError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        # A config error applies to every cell alike: stop now. Other failures (a NaN loss in
        # one cell) let the rest of the grid run and make the whole command fail at the end.
        if isinstance(error, ConfigError) or not multirun:
            raise SystemExit(2 if isinstance(error, ConfigError) else 1) from None
        FAILED_CELLS.append(f"{overrides}: {error}")
        return None
    if result.skipped and not result.run_id:
        return None  # another live job holds the cell
    if not result.skipped and result.run_id:  # ranks > 0 of a DeepSpeed cell track nothing
        fp = f"{result.fp_val_loss:.4f}" if result.fp_val_loss is not None else "-"
        print(
            f"[{result.run_key}] {overrides or 'defaults'}: fp/val_loss={fp} "
            f"final/val_loss={result.final_val_loss:.4f} (MLflow run {result.run_id})",
            flush=True,
        )
    return result.final_val_loss


def _run(config: RunConfig) -> RunResult:
    if config.trainer.backend == "packed":
        from qat.pack import run_single

        # A multirun trains its packs before its cells (GridCallback); each cell then reports.
        outcome = PACKED_RESULTS.pop(config.run_key, None) or run_single(config)
        if isinstance(outcome, TrainingError):
            raise outcome
        return outcome
    from qat.cell import run_cell

    return run_cell(config)


def configure_slurm_job() -> None:
    """Inside a SLURM job: defer submitit's requeue signal to a step boundary, and use the
    CPUs the job was given rather than every core of the node."""
    import os

    if not os.environ.get("SLURM_JOB_ID"):
        return
    from qat import preemption

    preemption.install()
    # A job of several tasks is one DeepSpeed cell (qat.distributed reads its rank from SLURM);
    # trainer=torch refuses it (qat.engine.torch_backend).
    cpus = os.environ.get("SLURM_CPUS_PER_TASK")
    if cpus and not os.environ.get("OMP_NUM_THREADS"):
        import torch

        torch.set_num_threads(int(cpus))
