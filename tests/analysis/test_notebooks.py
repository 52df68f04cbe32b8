"""Both notebooks execute top to bottom (02 against a real MLflow store)."""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbclient import NotebookClient

from tests.analysis.helpers import GRID_EXPERIMENT, REPO

NOTEBOOKS = REPO / "notebooks"


def execute(name: str, overrides: str = "") -> nbformat.NotebookNode:
    """Run a notebook from the repository root; `overrides` is injected after the cell tagged
    `parameters`, as papermill does."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), (
        "saved with outputs"
    )
    if overrides:
        i = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
        nb.cells.insert(i + 1, nbformat.v4.new_code_cell(overrides))
    client = NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}
    )
    client.execute()
    return nb


def outputs(nb) -> str:
    return "\n".join(
        o.get("text", "") + str(o.get("data", {}).get("text/plain", ""))
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
    )


def images(nb) -> int:
    return sum("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))


def test_01_paper_predictions_runs_on_the_shipped_law():
    nb = execute("01_paper_predictions.ipynb")
    text = outputs(nb)
    assert "ILLUSTRATIVE" in text and "paper f̂(S)" in text
    assert images(nb) == 4
    # Waste in the one unit of law.md and analysis.predict; the fit's health under the law.
    assert "wasted_pct" in text and "fit health: " in text


def test_02_fits_the_runs_in_mlflow(mlflow_store, tmp_path):
    out = tmp_path / "report"
    nb = execute(
        "02_fit_your_grid.ipynb",
        f'EXPERIMENT = "{GRID_EXPERIMENT}"\nSTARTS = 16\nOUT = r"{out}"',
    )
    text = outputs(nb)
    assert f"54 runs from mlflow:{GRID_EXPERIMENT}" in text
    assert (out / "law.json").is_file() and (out / "plots" / "iso_loss.png").is_file()


def test_02_says_loudly_it_fits_synthetic_data_and_writes_nothing_in_the_repo(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    written_there = ("mlflow.db", "outputs", "mlruns")
    before = {name for name in written_there if (REPO / name).exists()}
    # An experiment no store holds: synthetic whether or not a ./mlflow.db exists here.
    nb = execute("02_fit_your_grid.ipynb", 'EXPERIMENT = "no-such-experiment"\nSTARTS = 4')
    text = outputs(nb)
    assert "WARNING: SYNTHETIC DATA: no finished runs of experiment 'no-such-experiment'" in text
    report = next(line for line in text.splitlines() if "report folder" in line).split()[-1]
    assert (Path(report) / "law.json").is_file() and not Path(report).is_relative_to(REPO)
    assert {name for name in written_there if (REPO / name).exists()} == before


def test_repro_runs_on_a_grid_with_seeds(tmp_path):
    from analysis.synthetic import seeded_grid

    csv = tmp_path / "runs.csv"
    grid = {"sizes": (5e7, 1e8, 2e8), "bits": (1, 4), "tokens_per_param": (10, 160)}
    seeded_grid(**grid, fractions=(0.1, 0.3, 0.5, 0.7), seeds=(0, 1)).to_csv(csv, index=False)
    nb = execute(
        "repro.ipynb",
        f'RUNS = r"{csv}"\nSTARTS = 12\nFP_STARTS = 12\nBOOTSTRAP = 8\nWORKERS = 1',
    )
    text = outputs(nb)
    assert f"runs from {csv}" in text
    assert images(nb) == 2
    markdown = "\n".join(
        o.get("data", {}).get("text/markdown", "") for c in nb.cells for o in c.get("outputs", [])
    )
    for section in ("Law fit", "Optimal QAT fraction", "Seed noise", "predictor f̂(S)"):
        assert section in markdown
