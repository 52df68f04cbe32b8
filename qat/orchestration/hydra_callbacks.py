"""Hydra callbacks around a multirun (configured in conf/config.yaml)."""

from __future__ import annotations

import sys
from typing import Any, cast

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf


class GridCallback(Callback):
    def __init__(self) -> None:
        self._failed_before = 0  # FAILED_CELLS' length when the current job started

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Before any cell runs: validate every cell, create the tracking store's schema (jobs
        racing on a fresh SQLite store crash), register each trunk's branch points, and show the
        grid's bar when the cells train in this process."""
        from qat import progress
        from qat.errors import ConfigError, QatError
        from qat.orchestration.grid import expand_grid
        from qat.orchestration.trunk_plan import register_branch_points, unique_cells
        from qat.schedule import plan_phases
        from qat.tracking import ensure_store
        from qat.tracking_schema import resolve_tracking_uri

        try:
            params = config.hydra.sweeper.get("params")
            sweep = (
                cast("dict[str, str]", OmegaConf.to_container(params)) if params is not None else {}
            )
            cells = expand_grid(list(config.hydra.overrides.task), sweeper_params=sweep)
            ensure_store(resolve_tracking_uri(config.tracking.uri))
            packed = [c for c in cells if c.trainer.backend == "packed"]
            register_branch_points([c for c in cells if c.trainer.backend != "packed"])
            if _runs_here(config):
                budgets = {c.run_key: plan_phases(c).tokens_total for c in unique_cells(cells)}
                swept = _swept_keys(sweep, list(config.hydra.overrides.task))
                progress.start_grid(budgets, swept, enabled=bool(config.trainer.progress))
            if packed and _runs_here(config):
                # Packs train now, in this process; each cell's job then reports its outcome.
                from qat.orchestration.entry import PACKED_RESULTS
                from qat.orchestration.packs import run_packs

                PACKED_RESULTS.update(run_packs(packed))
        except QatError as error:
            progress.end_grid()
            print(f"error: {error}", file=sys.stderr)
            raise SystemExit(2 if isinstance(error, ConfigError) else 1) from None

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        from qat import progress
        from qat.orchestration.entry import FAILED_CELLS

        self._failed_before = len(FAILED_CELLS)
        grid = progress.active_grid()
        key = _run_key(config) if grid is not None else None
        if grid is not None and key is not None:
            grid.start_cell(key)

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        from hydra.core.utils import JobStatus

        from qat import progress
        from qat.orchestration.entry import FAILED_CELLS

        grid = progress.active_grid()
        key = _run_key(config) if grid is not None else None
        if grid is not None and key is not None:
            failed = (
                job_return.status == JobStatus.FAILED or len(FAILED_CELLS) > self._failed_before
            )
            grid.end_cell(key, failed)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from qat import progress
        from qat.orchestration.entry import FAILED_CELLS

        progress.end_grid()  # the summary below goes under the bar, not onto it
        if FAILED_CELLS:
            print(f"error: {len(FAILED_CELLS)} grid cell(s) failed:", file=sys.stderr)
            for line in FAILED_CELLS:
                print(f"  {line}", file=sys.stderr)
            raise SystemExit(1)


def _runs_here(config: DictConfig) -> bool:
    """Whether the launcher runs the cells in this process (Hydra's basic launcher)."""
    return str(config.hydra.launcher.get("_target_", "")).endswith("BasicLauncher")


def _swept_keys(sweeper_params: dict[str, str], overrides: list[str]) -> list[str]:
    """The keys the sweep varies (the grid file's and the command line's), which name a cell."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    lines = [f"{key}={value}" for key, value in sweeper_params.items()] + overrides
    parsed = OverridesParser.create().parse_overrides(lines)
    keys = [o.get_key_element().lstrip("+~") for o in parsed if o.is_sweep_override()]
    return list(dict.fromkeys(keys))


def _run_key(config: DictConfig) -> str | None:
    """The run key of a job's cell, for the grid's bar; None for a config that does not
    validate (the job itself reports why)."""
    from qat.config import RunConfig

    try:
        tree = cast("dict[str, Any]", OmegaConf.to_container(config, resolve=True))
        return RunConfig.from_dict({k: v for k, v in tree.items() if k != "hydra"}).run_key
    except Exception:  # a display only: it never stops a job
        return None
