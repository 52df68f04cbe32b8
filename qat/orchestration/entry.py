"""From a Hydra config to a finished run, turning every user-facing failure into one line:
``error: ...`` and exit 2 for a config error, 1 for a failure at run time; Ctrl-C prints where
training stopped and exits 130."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from omegaconf import DictConfig, OmegaConf

from qat.config import RunConfig
from qat.errors import INTERRUPT_EXIT, ConfigError, Interrupted, QatError, TrainingError, report

if TYPE_CHECKING:
    from qat.cell import RunResult

# Cells of this process's multirun that failed; GridCallback reports them at the end.
FAILED_CELLS: list[str] = []
# trainer=packed multiruns: each cell's outcome (a result, or its error) once its pack has run.
PACKED_RESULTS: dict[str, RunResult | TrainingError] = {}


def run_from_hydra(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig

    # mode is Optional in HydraConf's schema but always set once Hydra runs a job.
    multirun = HydraConfig.initialized() and HydraConfig.get().mode.name == "MULTIRUN"  # type: ignore[union-attr]
    # As typed: an override holding an interpolation (bits=${oc.env:X}) is not resolved here.
    task = (
        OmegaConf.to_container(HydraConfig.get().overrides.task)
        if HydraConfig.initialized()
        else []
    )
    overrides = " ".join(map(str, cast("list[Any]", task)))
    config: RunConfig | None = None
    started = False
    try:
        configure_slurm_job()
        config = RunConfig.from_dict(_resolved(cfg))
        from qat.orchestration.preflight import preflight

        preflight(config)
        started = True
        result = _run(config)
    except KeyboardInterrupt as interrupt:  # Ctrl-C: the cell is KILLED in MLflow, resumable
        if config is None:  # before the config was read: nothing started
            raise SystemExit(INTERRUPT_EXIT) from None
        print(_interrupted_line(config, interrupt), file=sys.stderr, flush=True)
        raise SystemExit(INTERRUPT_EXIT) from None
    except QatError as error:
        code = report(error)
        if not started and not multirun:
            _discard_output_dir()  # nothing ran: leave no outputs/<date>/<time> behind
        # A config error applies to every cell alike: stop now. Other failures (a NaN loss in
        # one cell) let the rest of the grid run and make the whole command fail at the end.
        if isinstance(error, ConfigError) or not multirun:
            raise SystemExit(code) from None
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


def _resolved(cfg: DictConfig) -> dict[str, Any]:
    """The config as plain values; an interpolation that cannot resolve (an unset ${oc.env:X})
    is a config error like any other."""
    from omegaconf.errors import OmegaConfBaseException

    try:
        return cast("dict[str, Any]", OmegaConf.to_container(cfg, resolve=True))
    except OmegaConfBaseException as error:
        raise ConfigError(str(error).strip().splitlines()[0]) from None


def _interrupted_line(config: RunConfig, interrupt: KeyboardInterrupt) -> str:
    """``interrupted at <tokens> tokens of <cell>; rerun to resume``: the tokens of the
    checkpoint written at the interrupt, else of the newest one a rerun resumes from."""
    from qat.tracking import run_name

    tokens = interrupt.tokens if isinstance(interrupt, Interrupted) else None
    if tokens is None:
        from qat.checkpoint import latest_checkpoint

        newest = latest_checkpoint(Path(config.run_dir) / config.run_key / "checkpoints")
        tokens = newest.tokens if newest is not None else None
    cell = run_name(config)  # as the MLflow run is named
    if tokens is None:  # stopped before its first checkpoint, or a pack's member
        return f"interrupted {cell}; rerun to resume"
    return f"interrupted at {tokens:,} tokens of {cell}; rerun to resume"


def _discard_output_dir() -> None:
    """Remove what Hydra wrote for a job that never started (.hydra/ and its empty log), and the
    folders above it that this left empty; anything else in them stays."""
    import shutil

    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.get()
    output_dir = Path(hydra_cfg.runtime.output_dir)
    if hydra_cfg.output_subdir is not None:
        shutil.rmtree(output_dir / str(hydra_cfg.output_subdir), ignore_errors=True)
    log = output_dir / f"{hydra_cfg.job.name}.log"
    if log.is_file() and log.stat().st_size == 0:
        log.unlink()
    cwd = Path.cwd().resolve()
    for folder in (output_dir, output_dir.parent, output_dir.parent.parent):
        if folder.resolve() == cwd or cwd.is_relative_to(folder.resolve()):
            break
        try:
            folder.rmdir()  # only if empty
        except OSError:
            break


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
