"""Where each grid cell stands: MLflow (finished/failed), its claim (running) and squeue (queued).

Shared by the SLURM launcher (submit only what needs work) and `python -m qat.status`.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

JOBS_FILE = "slurm_jobs.json"


def record_job(run_dir: Path, job_id: str) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / JOBS_FILE
    jobs = json.loads(path.read_text()) if path.exists() else []
    path.write_text(json.dumps([*jobs, job_id]))


def submitted_jobs(run_dir: Path) -> list[str]:
    path = run_dir / JOBS_FILE
    return json.loads(path.read_text()) if path.exists() else []


def queued_job_ids() -> dict[str, str]:
    """Job id → state for this user's jobs in squeue (array tasks as ARRAY_TASK)."""
    try:
        out = subprocess.run(
            ["squeue", "-h", "-r", "-o", "%i %T"], capture_output=True, text=True, timeout=60
        )
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return {}
    if out.returncode != 0:
        return {}
    return dict(line.split(maxsplit=1) for line in out.stdout.splitlines() if " " in line)


def cell_status(config: Any, live_jobs: dict[str, str]) -> str:
    """finished | running | queued | failed | new, from MLflow, the claim and squeue."""
    from qat.store.claim import Claim
    from qat.tracking import Tracker

    tracker = Tracker(config.tracking.uri, config.tracking.experiment)
    if tracker.finished_run(config.run_key) is not None:
        return "finished"
    run_dir = Path(config.run_dir) / config.run_key
    if Claim(run_dir).holder() is not None:
        return "running"
    states = [live_jobs[j] for j in submitted_jobs(run_dir) if j in live_jobs]
    if any(state == "RUNNING" for state in states):
        return "running"
    if states:
        return "queued"
    if tracker.runs_with_key(config.run_key):
        return "failed"
    return "new"


def grid_status(configs: list[Any]) -> list[tuple[str, Any]]:
    """(state, config) for every unique cell of the grid ``configs``."""
    from qat.orchestration.trunk_plan import unique_cells

    live_jobs = queued_job_ids()
    return [(cell_status(config, live_jobs), config) for config in unique_cells(configs)]
