"""Hydra callbacks around a multirun (configured in conf/config.yaml)."""

from __future__ import annotations

import sys
from typing import Any, cast

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf


class GridCallback(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Before any cell runs: validate every cell, create the tracking store's schema (jobs
        racing on a fresh SQLite store crash), and register each trunk's branch points."""
        from qat.errors import QatError, report
        from qat.orchestration.grid import expand_grid
        from qat.orchestration.trunk_plan import register_branch_points
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
            if packed and _runs_here(config):
                # Packs train now, in this process; each cell's job then reports its outcome.
                from qat.orchestration.entry import PACKED_RESULTS
                from qat.orchestration.packs import run_packs

                PACKED_RESULTS.update(run_packs(packed))
        except QatError as error:
            raise SystemExit(report(error)) from None

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from qat.orchestration.entry import FAILED_CELLS

        if FAILED_CELLS:
            print(f"error: {len(FAILED_CELLS)} grid cell(s) failed:", file=sys.stderr)
            for line in FAILED_CELLS:
                print(f"  {line}", file=sys.stderr)
            raise SystemExit(1)


def _runs_here(config: DictConfig) -> bool:
    """Whether the launcher runs the cells in this process (Hydra's basic launcher)."""
    return str(config.hydra.launcher.get("_target_", "")).endswith("BasicLauncher")
