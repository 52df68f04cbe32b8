"""What a grid on a small corpus of one's own leaves in MLflow: a classic experiment, run names
that say what each cell is, a loss curve per finished cell, and a FAILED cell's reason and
metrics. One two-cell grid (a sane and a diverging learning rate) on a 30-file folder."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from qat.tracking_schema import CLASSIC_ML_KIND, EXPERIMENT_KIND_TAG, LOSS_CURVE_ARTIFACT
from tests.data.helpers import write_corpus
from tests.integration.conftest import REPO

CELL = (
    "data.vocab_size=320",
    "data.batch_size=4",
    "data.seq_len=32",
    "data.eval_tokens=256",
    "tokens=2K",
    "optim.grad_clip=0",
    "trainer.log_every=1",
    "trainer.progress=false",
)


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    work = tmp_path_factory.mktemp("own-corpus")
    corpus = write_corpus(work / "my-texts", n_docs=30)
    env = dict(
        os.environ,
        QAT_DATA_DIR=str(work / "data"),
        QAT_RUN_DIR=str(work / "runs"),
        MLFLOW_TRACKING_URI=f"sqlite:///{work}/mlflow.db",
        PYTHONUNBUFFERED="1",
    )
    command = [sys.executable, str(REPO / "train.py"), "-m", f"data.source={corpus}", *CELL]
    result = subprocess.run(
        [*command, "optim.lr=3e-3,1e30"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    client = MlflowClient(tracking_uri=f"sqlite:///{work}/mlflow.db")
    experiment = client.get_experiment_by_name("qat")
    assert experiment is not None, result.stderr[-3000:]
    by_status = {r.info.status: r for r in client.search_runs([experiment.experiment_id])}
    return work, result, client, experiment, by_status


def test_small_folder_corpus_trains_on_the_defaults_split(grid):
    _, result, *_ = grid
    # The diverging cell fails the command; the split did not (30 files, val_fraction 0.02).
    assert result.returncode == 1, result.stderr[-3000:]
    assert "validation documents" not in result.stderr
    assert "validation: moved" in result.stdout


def test_experiment_opens_as_a_classic_ml_experiment(grid):
    *_, experiment, _ = grid
    assert experiment.tags[EXPERIMENT_KIND_TAG] == CLASSIC_ML_KIND


def test_run_names_say_every_swept_key_and_differ(grid):
    *_, by_status = grid
    finished, failed = by_status["FINISHED"], by_status["FAILED"]
    key = finished.data.tags["run_key"]
    assert finished.info.run_name == f"nano-b4-f0.3-t2K-s0-my-texts-v320-{key[:6]}"
    assert failed.info.run_name != finished.info.run_name


def test_finished_cell_has_its_loss_curve(grid):
    _, _, client, _, by_status = grid
    run = by_status["FINISHED"]
    names = [a.path for a in client.list_artifacts(run.info.run_id)]
    assert LOSS_CURVE_ARTIFACT in names
    path = Path(client.download_artifacts(run.info.run_id, LOSS_CURVE_ARTIFACT))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_failed_cell_carries_its_reason_and_its_metrics(grid):
    work, _, client, _, by_status = grid
    run = by_status["FAILED"]
    assert run.data.tags["error"].startswith("training loss is nan at step ")
    assert run.data.tags["error"].endswith("; lower optim.lr or check the data")
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert len(history) >= 2 and math.isfinite(history[0].value)
    assert not math.isfinite(max(history, key=lambda m: m.step).value)  # where it diverged
    lines = (work / "runs" / run.data.tags["run_key"] / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["tokens"] for line in lines] == sorted(m.step for m in history)
