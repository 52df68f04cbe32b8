"""The training grid on the local SLURM cluster through hydra/launcher=slurm: submission returns
at once, every cell finishes, a requeued cell resumes from its checkpoint, resubmission submits
nothing, and `qat.status` sees it all."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.conftest import VOCAB, runs, train, train_env

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm_cluster")]

REPO = Path(__file__).resolve().parents[2]
GRID = (
    "-m",
    "hydra/launcher=slurm",
    "model=nano",
    "bits=2,4",
    "qat_frac=0.2,0.5",
    "tokens=300K",
    f"data.vocab_size={VOCAB}",
    "data.batch_size=8",
    "data.eval_tokens=16384",
    "trainer.ckpt_every_frac=0.1",
)


def wait_until(predicate, timeout: float, what: str, poll: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out waiting for {what}")


def first_checkpointed_cell(workdir: Path) -> Path | None:
    for run_dir in sorted((workdir / "runs").glob("[0-9a-f]*")):
        if list(run_dir.glob("checkpoints/[0-9]*/COMPLETE")) and (run_dir / "claim.json").exists():
            return run_dir
    return None


@pytest.mark.timeout(900)
def test_grid_runs_requeues_and_resubmits_nothing(tmp_path, data_root):
    started = time.monotonic()
    submit = train(tmp_path, data_root, *GRID, timeout=300)
    assert submit.returncode == 0, submit.stderr[-4000:]
    assert "submitted 4 cell(s) as job array" in submit.stdout
    assert time.monotonic() - started < 120  # returned once queued, not after the jobs

    # Signal one running cell once it has a checkpoint, as submitit's `_interrupt(timeout=True)`
    # does: USR2 alone, what Slurm sends `signal_delay_s` before the time limit.
    run_dir = wait_until(lambda: first_checkpointed_cell(tmp_path), 300, "a checkpoint", 0.2)
    (job_id,) = json.loads((run_dir / "slurm_jobs.json").read_text())
    subprocess.run(["scancel", job_id, "--signal", "USR2"], check=True, timeout=60)

    def finished():
        return [r for r in runs(tmp_path) if r.info.status == "FINISHED"]

    def queue_empty():
        out = subprocess.run(["squeue", "-h"], capture_output=True, text=True, timeout=60)
        return out.returncode == 0 and not out.stdout.strip()

    wait_until(queue_empty, 600, "the job array to leave the queue", poll=3)
    logs = "".join(p.read_text() for p in tmp_path.glob("multirun/**/*_log.*"))
    assert "Requeued job" in logs  # the signalled job checkpointed and was requeued
    if len(finished()) < 4:
        # Slurm may deliver the signal again to the requeued attempt while submitit is still
        # unpickling (before its handler exists), which kills that attempt. Submitting again
        # is then the user's recovery path: only the unfinished cell goes, and it resumes.
        retry = train(tmp_path, data_root, *GRID, timeout=300)
        assert retry.returncode == 0, retry.stderr[-4000:]
        assert f"submitted {4 - len(finished())} cell(s)" in retry.stdout
        wait_until(queue_empty, 600, "the resubmitted job to finish", poll=3)
    done = finished()
    assert len(done) == 4 and all("final/val_loss" in r.data.metrics for r in done)
    logs = "".join(p.read_text() for p in tmp_path.glob("multirun/**/*_log.out"))
    assert f"[{run_dir.name}] resuming from {run_dir}/checkpoints/" in logs

    again = train(tmp_path, data_root, *GRID, timeout=300)
    assert again.returncode == 0, again.stderr[-4000:]
    assert "nothing to submit" in again.stdout

    status = subprocess.run(
        [sys.executable, "-m", "qat.status", *GRID[2:]],
        cwd=tmp_path,
        env=train_env(tmp_path, data_root),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert status.returncode == 0, status.stderr[-3000:]
    assert "finished: 4  running: 0  queued: 0  failed: 0  new: 0" in status.stdout


@pytest.mark.timeout(600)
def test_a_packed_grid_is_one_array_task_per_pack(tmp_path, data_root):
    grid = (*GRID, "trainer=packed", "tokens=100K")
    submit = train(tmp_path, data_root, *grid, timeout=300)
    assert submit.returncode == 0, submit.stderr[-4000:]
    assert "submitted 4 cell(s) in 1 pack(s) as job array" in submit.stdout

    def queue_empty():
        out = subprocess.run(["squeue", "-h"], capture_output=True, text=True, timeout=60)
        return out.returncode == 0 and not out.stdout.strip()

    wait_until(queue_empty, 500, "the pack's job to leave the queue", poll=3)
    done = [r for r in runs(tmp_path) if r.info.status == "FINISHED"]
    assert len(done) == 4, [r.info.status for r in runs(tmp_path)]
    assert len({r.data.tags["pack_key"] for r in done}) == 1
    again = train(tmp_path, data_root, *grid, timeout=300)
    assert "nothing to submit" in again.stdout
