"""One trainer=deepspeed cell as a SLURM job of two tasks (srun, one process per task): the
rendezvous comes from SLURM's variables, rank 0 alone tracks the run."""

from __future__ import annotations

import pytest

from tests.integration.conftest import VOCAB, runs, train

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm_cluster")]


@pytest.mark.timeout(600)
def test_two_task_job_trains_one_cell(tmp_path, data_root, monkeypatch):
    monkeypatch.setenv("QAT_SLURM_WAIT", "1")  # block until the job is done
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    result = train(
        tmp_path,
        data_root,
        "-m",
        "hydra/launcher=slurm",
        "hydra.launcher.tasks_per_node=2",
        "trainer=deepspeed",
        "trainer.zero_stage=1",
        "model=nano",
        "bits=4",
        "qat_frac=0.5",
        "tokens=60K",
        f"data.vocab_size={VOCAB}",
        "data.batch_size=8",
        "data.eval_tokens=8192",
        timeout=500,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    (run,) = runs(tmp_path)
    assert run.info.status == "FINISHED"
    assert run.data.params["world_size"] == "2"
    logs = [p.read_text() for p in tmp_path.glob("multirun/**/*_log.out")]
    assert len(logs) == 2  # one per task
    assert all("Job completed successfully" in text for text in logs)
    final = f"final/val_loss={run.data.metrics['final/val_loss']:.4f}"
    reported = [text for text in logs if f"{final} (MLflow run {run.info.run_id})" in text]
    assert len(reported) == 1  # rank 0 alone tracks and reports the run
