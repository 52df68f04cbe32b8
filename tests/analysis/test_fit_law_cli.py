"""`python -m analysis.fit_law` end to end: from a CSV and from a real MLflow store."""

from __future__ import annotations

import json

import pytest
from mlflow.tracking import MlflowClient

from analysis.fit_law import ANALYSIS_EXPERIMENT, main
from analysis.health import health_lines
from analysis.law import load_law
from analysis.synthetic import qat_grid
from tests.analysis.helpers import GRID_EXPERIMENT, run_module

QAT_PLOTS = (
    "fit_quality",
    "optimal_fraction",
    "wasted_tokens",
    "iso_loss",
    "loss_vs_fraction",
    "best_bits",
)


def analysis_runs(uri: str) -> list:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(ANALYSIS_EXPERIMENT)
    assert exp is not None, "no analysis experiment was created"
    assert exp.tags.get("mlflow.experimentKind") == "custom_model_development"  # not GenAI
    return client.search_runs([exp.experiment_id])


def test_fit_law_from_csv_end_to_end(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    qat_grid(sizes=(5e7, 1e8, 2e8), seed=8).to_csv(tmp_path / "grid.csv", index=False)
    out = run_module(
        "analysis.fit_law",
        "--csv",
        "grid.csv",
        "--starts",
        "40",
        "--bootstrap",
        "4",
        "--out",
        "fit",
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert "dropped 15 rows: full precision" in out.stderr  # logged, with the reason

    law = load_law(tmp_path / "fit" / "law.json")
    raw = json.loads((tmp_path / "fit" / "law.json").read_text("utf-8"))
    assert raw["law"] == "qat" and set(raw["r2_by_bits"]) == {"1", "2", "4", "6"}
    assert law.r2 > 0.99 and law.n_points == 420 and law.settings["bootstrap"] == 4
    assert set(law.ci) == set(law.params)
    for name in QAT_PLOTS:
        for ext in ("png", "pdf"):
            assert (tmp_path / "fit" / "plots" / f"{name}.{ext}").stat().st_size > 1000
    summary = (tmp_path / "fit" / "law.md").read_text("utf-8")
    assert "# Law fit: qat" in summary and "a = " in summary
    # The law records the runs it was fitted on, and reports its health in law.md and as the
    # CLI's last lines.
    assert raw["domain"]["N"] == [5e7, 2e8] and raw["domain"]["bits"] == [1.0, 2.0, 4.0, 6.0]
    assert law.domain == raw["domain"]
    health = health_lines(law)
    assert out.stderr.strip().splitlines()[-len(health) :] == health
    assert "## Fit health\n\n" + "\n".join(health) in summary
    assert "## Domain" in summary and "| N | 5e+07 | 2e+08 |" in summary

    [run] = analysis_runs(uri)
    assert run.info.status == "FINISHED"
    assert run.data.params["law"] == "qat" and run.data.params["source"] == "file:grid.csv"
    assert run.data.metrics["r2"] == pytest.approx(law.r2)
    artifacts = {a.path for a in MlflowClient(uri).list_artifacts(run.info.run_id)}
    assert {"law.json", "law.md", "plots", "residuals.csv"} <= artifacts


def test_fit_law_from_an_mlflow_experiment(mlflow_store, tmp_path):
    code = main(["--experiment", GRID_EXPERIMENT, "--starts", "30", "--out", str(tmp_path / "o")])
    assert code == 0
    law = load_law(tmp_path / "o" / "law.json")
    assert law.n_points == 48  # the 6 full-precision runs are left to the chinchilla law
    [run] = analysis_runs(mlflow_store)
    assert run.data.params["source"] == f"mlflow:{GRID_EXPERIMENT}"

    code = main(
        [
            "--experiment",
            GRID_EXPERIMENT,
            "--law",
            "chinchilla",
            "--starts",
            "30",
            "--tracking-uri",
            mlflow_store,
            "--out",
            str(tmp_path / "fp"),
        ]
    )
    assert code == 0
    fp = load_law(tmp_path / "fp" / "law.json")
    assert fp.law.name == "chinchilla" and fp.n_points == 6
    assert sorted(p.name for p in (tmp_path / "fp" / "plots").iterdir()) == [
        "fit_quality.pdf",
        "fit_quality.png",
    ]
    assert len(analysis_runs(mlflow_store)) == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--csv", "missing.csv"], "error: runs file 'missing.csv' does not exist"),
        (["--experiment", "nope"], "error: MLflow experiment 'nope' not found"),
        (["--csv", "qat_only.csv", "--law", "chinchilla"], "error: no rows the chinchilla law"),
        (["--csv", "qat_only.csv", "--starts", "0"], "error: starts=0; must be >= 1"),
    ],
)
def test_fit_law_errors_exit_2_with_one_line(mlflow_store, tmp_path, capsys, args, message):
    qat_grid(sizes=(1e8,), fp_rows=False).to_csv(tmp_path / "qat_only.csv", index=False)
    assert main([*args, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert [line for line in err.splitlines() if line.startswith("error:")] == [err.strip()]
