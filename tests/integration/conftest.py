"""Helpers: train.py run as a real subprocess in its own folder, MLflow store and run folders.

The session fixtures (the bundled corpus prepared once) are in tests/conftest.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import VOCAB

__all__ = ["VOCAB"]
REPO = Path(__file__).resolve().parents[2]


def train_env(workdir: Path, data_root: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        QAT_DATA_DIR=str(data_root),
        QAT_RUN_DIR=str(workdir / "runs"),
        MLFLOW_TRACKING_URI=f"sqlite:///{workdir}/mlflow.db",
        PYTHONUNBUFFERED="1",
    )
    return env


def train(workdir: Path, data_root: Path, *overrides: str, timeout: float = 900):
    """Run train.py in ``workdir`` (its own MLflow store and run folders)."""
    workdir.mkdir(parents=True, exist_ok=True)
    flags = [o for o in overrides if o.startswith("-")]  # argparse wants flags before overrides
    rest = [o for o in overrides if not o.startswith("-")]
    return subprocess.run(
        [sys.executable, str(REPO / "train.py"), *flags, "trainer.progress=false", *rest],
        cwd=workdir,
        env=train_env(workdir, data_root),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def smoke_grid(tmp_path_factory, data_root):
    """`train.py -m grid=smoke` run once per session: (its folder, the finished process).
    The folder holds mlflow.db and runs/ as the README's commands leave them in a checkout."""
    workdir = tmp_path_factory.mktemp("smoke")
    result = train(workdir, data_root, "-m", "grid=smoke")
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir, result


def runs(workdir: Path, experiment: str = "qat"):
    """All MLflow runs of the experiment in ``workdir``'s store, as entities."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{workdir}/mlflow.db")
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    return client.search_runs([found.experiment_id])


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]
