"""qat's non-blocking, idempotent SLURM launcher (conf/hydra/launcher/slurm.yaml selects it).

hydra-submitit-launcher submits a job array and then waits for every job, which can be days; its
maintainers declined to change that. This launcher submits only the cells that still need work
(not FINISHED in MLflow, not queued or running already) as one job array and returns once it is
queued; `make status` (python -m qat.status) follows the grid from there. Hydra instantiates
launchers only from the ``hydra_plugins`` namespace package, hence this module's place.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher

from qat.orchestration.cell_status import cell_status, queued_job_ids, record_job

log = logging.getLogger(__name__)


class QueueingSlurmLauncher(SlurmLauncher):
    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        # The plugin's config schema is closed, so waiting is switched on from the environment.
        self.wait = os.environ.get("QAT_SLURM_WAIT") == "1"

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        from qat.orchestration.grid import cell_configs

        todo, run_dirs = [], []
        live_jobs = queued_job_ids()
        configs = cell_configs(job_overrides)  # one compose per group choice, not per cell
        self._configs = {tuple(o): c for o, c in zip(job_overrides, configs, strict=True)}
        for overrides, config in zip(job_overrides, configs, strict=True):
            status = cell_status(config, live_jobs)
            if status in ("finished", "queued", "running"):
                log.info(f"skipping {' '.join(overrides)}: {status}")
                continue
            if config.run_key in {Path(d).name for d in run_dirs}:
                continue  # two overrides naming one run (FP-only cells): submit it once
            todo.append(overrides)
            run_dirs.append(Path(config.run_dir) / config.run_key)
        if not todo:
            print(f"nothing to submit: all {len(job_overrides)} cells are finished or queued")
            return []
        returns = super().launch(todo, initial_job_idx) if self.wait else self._submit(todo)
        return returns

    def _submit(self, todo: list[Sequence[str]]) -> list[JobReturn]:
        """The upstream launch without its final wait for every job's result."""
        import submitit

        original_map_array = submitit.AutoExecutor.map_array
        submitted: list[Any] = []

        def map_array(executor: Any, fn: Any, *iterables: Any) -> list[Any]:
            jobs = original_map_array(executor, fn, *iterables)
            submitted.extend(jobs)
            return []  # nothing to wait for: upstream then collects no results

        submitit.AutoExecutor.map_array = map_array  # type: ignore[method-assign]
        try:
            super().launch(todo, 0)
        finally:
            submitit.AutoExecutor.map_array = original_map_array  # type: ignore[method-assign]
        for overrides, job in zip(todo, submitted, strict=True):
            config = self._configs[tuple(overrides)]
            record_job(Path(config.run_dir) / config.run_key, job.job_id)
        array = submitted[0].job_id.split("_")[0] if submitted else "-"
        print(
            f"submitted {len(submitted)} cell(s) as job array {array}; "
            f"follow with `make status` (python -m qat.status) or squeue"
        )
        return [_queued(overrides) for overrides in todo]


def _queued(overrides: Sequence[str]) -> JobReturn:
    # Submitted is all this process knows: each job's own outcome goes to MLflow.
    return JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED, _return_value=None)
