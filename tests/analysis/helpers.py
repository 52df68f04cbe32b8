"""Test helpers: log a grid to a real MLflow store in the trainer's schema; run CLIs."""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from analysis.law import QAT, FittedLaw
from analysis.synthetic import TRUE_QAT_PARAMS, fused_grid, qat_grid

GRID_EXPERIMENT = "grid"
REPO = Path(__file__).resolve().parents[2]
# The law that generates the synthetic grids, as a fitted law: the known answer.
HIDDEN_LAW = FittedLaw(QAT, dict(TRUE_QAT_PARAMS), math.nan, {}, 0, {})


def log_runs(client: MlflowClient, experiment_id: str, runs: pd.DataFrame) -> list[str]:
    """Log one FINISHED run per row the way the trainer does (strings for params)."""
    ids = []
    for row in runs.itertuples():
        key = hashlib.sha1(f"{row.N}-{row.B}-{row.D_fp}-{row.D_qat}".encode()).hexdigest()[:12]
        run = client.create_run(experiment_id, tags={"run_key": key})
        params = {
            "bits": float(row.B),  # the trainer logs floats: "4.0", "1.58", "16.0"
            "qat_frac": row.D_qat / (row.D_fp + row.D_qat),
            "tokens": row.D_fp + row.D_qat,
            "fusion": bool(row.fusion),
            "seed": 0,
            "model.name": f"synthetic-{row.N:.0f}",
            "optim.lr": 3e-4,
            "n_params": int(row.N),
            "n_params_total": int(row.N * 1.3),
            "tokens_fp": round(row.D_fp),  # token counts are integers
            "tokens_qat": round(row.D_qat),
        }
        now = int(time.time() * 1000)
        steps = int(row.D_fp + row.D_qat)
        client.log_batch(
            run.info.run_id,
            metrics=[
                Metric("final/val_loss", float(row.loss), now, steps),
                Metric("fp/val_loss", float(row.loss) * 0.98, now, round(row.D_fp)),
            ],
            params=[Param(k, str(v)) for k, v in params.items()],
        )
        client.set_terminated(run.info.run_id, "FINISHED")
        ids.append(run.info.run_id)
    return ids


def small_grid() -> pd.DataFrame:
    """48 QAT runs and 6 full-precision runs: enough for every code path, quick to log."""
    return qat_grid(
        sizes=(5e7, 1e8, 2e8),
        bits=(1.0, 4.0),
        tokens_per_param=(20.0, 100.0),
        fractions=(0.1, 0.3, 0.5, 0.7),
        seed=3,
    )


def run_module(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`python -m module args` in a subprocess with the repository importable (it is not
    installed in the venv), the current environment otherwise."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def pipelines_grid(
    sizes: tuple[float, ...],
    bits: tuple[float, ...],
    tokens_per_param: tuple[float, ...],
    classic: tuple[float, ...],
    fused: tuple[float, ...] = (),
    fp_gain: float = 0.05,
    noise: float = 0.0,
    seed: int = 0,
) -> pd.DataFrame:
    """Classic QAT cells at the `classic` fractions (plus FP-only baselines) and, if `fused`
    fractions are given, fused cells of the same sizes, bits and budgets whose FP tokens count
    `fp_gain` more; all from the hidden law, with independent noise per pipeline."""
    parts = [qat_grid(TRUE_QAT_PARAMS, sizes, bits, tokens_per_param, classic, noise, seed)]
    if fused:
        parts.append(
            fused_grid(
                TRUE_QAT_PARAMS, sizes, bits, tokens_per_param, fused, fp_gain, noise, seed + 100
            )
        )
    return pd.concat(parts, ignore_index=True)


def rebuild_committed(
    name: str, main: Callable[[Sequence[str]], int], out: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[dict[str, Any], dict[str, Any], Path]:
    """Rebuild results/<name> from its committed runs.csv into ``out`` with a report CLI, as
    `make` runs it (from the repository root, so the summary names its source alike): the new
    summary.json, the committed one, and the committed folder."""
    committed = REPO / "results" / name
    monkeypatch.chdir(REPO)
    assert main(["--runs", f"results/{name}/runs.csv", "--out", str(out)]) == 0
    now = json.loads((out / "summary.json").read_text())
    return now, json.loads((committed / "summary.json").read_text()), committed


def same_law_and_plots(out: Path, committed: Path) -> None:
    """The rebuilt law has the committed law's keys and the plots are the same files."""
    law_now = json.loads((out / "law.json").read_text())
    law_then = json.loads((committed / "law.json").read_text())
    assert law_now.keys() == law_then.keys()
    plots = sorted(p.name for p in (committed / "plots").iterdir())
    assert sorted(p.name for p in (out / "plots").iterdir()) == plots
