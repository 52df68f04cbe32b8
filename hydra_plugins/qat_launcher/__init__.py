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
        packs = self._packs(todo)
        if packs is not None:
            return self._submit(todo, packs)
        returns = super().launch(todo, initial_job_idx) if self.wait else self._submit(todo)
        return returns

    def _packs(self, todo: list[Sequence[str]]) -> list[list[Sequence[str]]] | None:
        """trainer=packed: the cells grouped into packs (one array task each), else None.
        A task splits its pack further if the GPU it lands on cannot hold it (qat.pack)."""
        configs = [self._configs[tuple(o)] for o in todo]
        if not all(c.trainer.backend == "packed" for c in configs):
            return None
        from qat.orchestration.packs import group_packs

        by_key = {c.run_key: o for c, o in zip(configs, todo, strict=True)}
        groups = group_packs(configs, lambda c: c.trainer.pack_size or None)
        return [[by_key[c.run_key] for c in group] for group in groups]

    def __call__(
        self,
        sweep_overrides: Any,
        job_dir_key: str,
        job_num: int,
        job_id: str,
        singleton_state: dict[type, Any],
    ) -> JobReturn:
        """One array task: a cell (upstream), or a pack (a list of cells' overrides)."""
        if not sweep_overrides or isinstance(sweep_overrides[0], str):
            return super().__call__(sweep_overrides, job_dir_key, job_num, job_id, singleton_state)
        return self._run_pack(sweep_overrides, singleton_state)

    def _run_pack(self, members: list[list[str]], singleton_state: dict[type, Any]) -> JobReturn:
        from hydra.core.singleton import Singleton
        from hydra.core.utils import setup_globals
        from omegaconf import OmegaConf, open_dict

        from qat.config import RunConfig
        from qat.orchestration.entry import configure_slurm_job
        from qat.orchestration.packs import run_packs

        assert self.hydra_context is not None and self.config is not None
        Singleton.set_state(singleton_state)
        setup_globals()
        configure_slurm_job()
        configs = []
        for overrides in members:
            tree = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
            with open_dict(tree):
                del tree["hydra"]  # the job's own config, as Hydra hands a task function
            configs.append(RunConfig.from_dict(OmegaConf.to_container(tree, resolve=True)))  # type: ignore[arg-type]
        outcomes = run_packs(configs)
        failed = [
            f"{key}: {error}" for key, error in outcomes.items() if isinstance(error, Exception)
        ]
        for line in failed:
            print(f"error: {line}", flush=True)
        status = JobStatus.FAILED if failed else JobStatus.COMPLETED
        return JobReturn(overrides=[], status=status, _return_value=None)

    def _submit(
        self, todo: list[Sequence[str]], packs: list[list[Sequence[str]]] | None = None
    ) -> list[JobReturn]:
        """The upstream launch without its final wait for every job's result; with ``packs``,
        one array task per pack (its first cell's overrides stand in for it upstream)."""
        import submitit

        original_map_array = submitit.AutoExecutor.map_array
        submitted: list[Any] = []
        tasks = packs if packs is not None else [[overrides] for overrides in todo]

        def map_array(executor: Any, fn: Any, *iterables: Any) -> list[Any]:
            if packs is not None:  # each task runs a whole pack
                iterables = ([list(map(list, p)) for p in packs], *iterables[1:])
            jobs = original_map_array(executor, fn, *iterables)
            submitted.extend(jobs)
            return []  # nothing to wait for: upstream then collects no results

        submitit.AutoExecutor.map_array = map_array  # type: ignore[method-assign]
        try:
            super().launch([task[0] for task in tasks], 0)
        finally:
            submitit.AutoExecutor.map_array = original_map_array  # type: ignore[method-assign]
        for task, job in zip(tasks, submitted, strict=True):
            for overrides in task:
                config = self._configs[tuple(overrides)]
                record_job(Path(config.run_dir) / config.run_key, job.job_id)
        array = submitted[0].job_id.split("_")[0] if submitted else "-"
        what = f"{len(todo)} cell(s) in {len(tasks)} pack(s)" if packs else f"{len(todo)} cell(s)"
        print(
            f"submitted {what} as job array {array}; "
            f"follow with `make status` (python -m qat.status) or squeue"
        )
        return [_queued(overrides) for overrides in todo]


def _queued(overrides: Sequence[str]) -> JobReturn:
    # Submitted is all this process knows: each job's own outcome goes to MLflow.
    return JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED, _return_value=None)
