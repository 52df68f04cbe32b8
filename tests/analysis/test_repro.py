"""`python -m analysis.repro`: the report's files from a runs table, byte for byte again on a
rerun, and from a partial table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import repro
from analysis.synthetic import fused_grid, seeded_grid
from tests.analysis.helpers import rebuild_committed, same_law_and_plots

GRID = {
    "sizes": (5e7, 1e8, 2e8),
    "bits": (1, 4),
    "tokens_per_param": (10, 160),
}
OPTIONS = ["--starts", "12", "--fp-starts", "12", "--bootstrap", "8", "--workers", "1"]


@pytest.fixture(scope="module")
def runs_csv(tmp_path_factory) -> Path:
    classic = seeded_grid(**GRID, fractions=(0.1, 0.3, 0.5, 0.7), seeds=(0, 1), noise=0.0005)
    fused = fused_grid(**GRID, fractions=(0.1, 0.3)).assign(seed=0)
    path = tmp_path_factory.mktemp("repro") / "runs.csv"
    pd.concat([classic, fused], ignore_index=True).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def report(runs_csv, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report")
    assert repro.main(["--runs", str(runs_csv), "--out", str(out), *OPTIONS]) == 0
    return out


def test_the_report_holds_every_section(report):
    files = sorted(p.relative_to(report).as_posix() for p in report.rglob("*") if p.is_file())
    assert {"law.json", "residuals.csv", "summary.json", "summary.md"} <= set(files)
    assert {"plots/fit_quality.png", "plots/optimal_fraction.png"} <= set(files)
    s = json.loads((report / "summary.json").read_text())
    held = s["fit"]["held_out"]
    assert held["available"] and held["held_out_N"] == 2e8
    assert held["r2"] > 0.9  # two sizes predict the third (0.94 with these few starts)
    assert s["fit"]["ci"] is not None and s["fit"]["r2"] > 0.99
    assert s["optimal_fraction"]["trend"]["cells"] == 3 * 2 * 2
    assert {k: t["cells"] for k, t in s["optimal_fraction"]["trend_by_bits"].items()} == {
        "1": 6,
        "4": 6,
    }
    assert s["seed_noise"]["available"] and s["seed_noise"]["cells_with_seeds"] == 12
    assert s["fusion"]["overall"]["verdict"] == "fused better"
    waste = s["wasted_compute"]["by_bits"]
    assert set(waste) == {"1", "4"}
    for w in waste.values():
        assert w["law_wasted_pct_min"] <= w["law_wasted_pct_median"] <= w["law_wasted_pct_max"]
        assert w["law_unreachable"] == 0
    assert s["advice"]["crossover"][0]["bits"] == "1"
    md = (report / "summary.md").read_text()
    for title in ("Law fit", "Optimal QAT fraction", "Seed noise", "Wasted", "Fused", "advises"):
        assert title in md
    # A table collected before the repetition columns: the section says so, nothing fails.
    assert s["data_repetition"]["gap_trend"]["available"] is False
    assert "## 7. Data repetition" in md
    assert "Not available: no train_loss, epochs column in this table" in md
    assert json.loads((report / "law.json").read_text())["settings"]["fit"].startswith(
        "fp-anchored"
    )


def test_a_rerun_gives_the_same_bytes(runs_csv, report, tmp_path):
    assert repro.main(["--runs", str(runs_csv), "--out", str(tmp_path), *OPTIONS]) == 0
    for p in report.rglob("*"):
        if p.is_file():
            assert (tmp_path / p.relative_to(report)).read_bytes() == p.read_bytes(), p.name


def test_a_partial_table_still_gives_a_report(runs_csv, tmp_path):
    runs = pd.read_csv(runs_csv)
    # A run half done: the largest size, one seed, most fused cells and some classic runs missing.
    partial = runs[~((runs.N == 2e8) | (runs.seed == 1) | runs.fusion)].sample(
        frac=0.8, random_state=0
    )
    path = tmp_path / "runs.csv"
    partial.to_csv(path, index=False)
    assert repro.main(["--runs", str(path), "--out", str(tmp_path / "out"), *OPTIONS]) == 0
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert s["seed_noise"]["available"] is False
    assert s["fusion"]["available"] is False
    assert s["fit"]["held_out"]["available"] is True  # two sizes left
    assert "Not available" in (tmp_path / "out" / "summary.md").read_text()


def test_a_table_without_classic_runs_is_one_line(tmp_path, capsys):
    path = tmp_path / "runs.csv"
    fused_grid(**GRID).to_csv(path, index=False)
    assert repro.main(["--runs", str(path), "--out", str(tmp_path / "out")]) == 2
    assert "no classic QAT runs" in capsys.readouterr().err


def test_the_default_runs_switch_to_the_reproduction_grid_once_it_exists(tmp_path):
    assert repro.default_runs(tmp_path) == tmp_path / "results/mini/runs.csv"
    (tmp_path / "results/repro").mkdir(parents=True)
    (tmp_path / "results/repro/runs.csv").write_text("N\n")
    assert repro.default_runs(tmp_path) == tmp_path / "results/repro/runs.csv"


def test_the_committed_repro_results_are_rebuilt_from_their_runs_table(tmp_path, monkeypatch):
    """`make repro-report` on results/repro/runs.csv gives back the committed report's data
    facts: the grid, the seed noise and every cell's f* from the runs, and the same plots and law
    parameters. The law's values are not compared: its multi-start fit of a poorly identified
    law may land elsewhere with another CPU's floating-point kernels. A rerun on one machine
    is byte for byte (test_a_rerun_gives_the_same_bytes)."""
    now, then, committed = rebuild_committed("repro", repro.main, tmp_path, monkeypatch)
    assert now["grid"] == then["grid"]
    # Sums of the same numbers may round apart in the last bit with another CPU's SIMD width.
    assert now["seed_noise"] == pytest.approx(then["seed_noise"], rel=1e-9)
    exact = ("N", "D_total", "B", "f_star", "n_seeds", "censored")
    cells, cells_then = now["optimal_fraction"]["cells"], then["optimal_fraction"]["cells"]
    assert [[c[k] for k in exact] for c in cells] == [[c[k] for k in exact] for c in cells_then]
    losses = [c["loss_star"] for c in cells]
    assert losses == pytest.approx([c["loss_star"] for c in cells_then], rel=1e-9)
    law_now = json.loads((tmp_path / "law.json").read_text())["params"]
    law_then = json.loads((committed / "law.json").read_text())["params"]
    assert law_now.keys() == law_then.keys()
    same_law_and_plots(tmp_path, committed)


GAP_SLOPE = 0.02  # nats of train-validation gap per doubling of epochs


def test_runs_on_half_the_data_enter_the_repetition_section_only(runs_csv, report, tmp_path):
    """The same table with the repetition columns and two cells again on half the split: the
    law's fit is the whole-split runs' (as in `report`), the section pairs the two and recovers
    the gap's growth with epochs."""
    runs = pd.read_csv(runs_csv)
    epochs = (runs.D_fp + runs.D_qat) / 1e9
    gap = 0.3 + GAP_SLOPE * np.log2(epochs)
    runs = runs.assign(train_fraction=1.0, epochs=epochs, train_loss=runs.loss - gap)
    picked = runs[(runs.seed == 0) & ~runs.fusion & (runs.B == 1)].iloc[:2]
    half = picked.assign(
        train_fraction=0.5, epochs=picked.epochs * 2, loss=picked.loss + 0.01
    ).assign(train_loss=lambda d: d.loss - 0.3 - GAP_SLOPE * np.log2(d.epochs))
    path = tmp_path / "runs.csv"
    pd.concat([runs, half], ignore_index=True).to_csv(path, index=False)
    assert repro.main(["--runs", str(path), "--out", str(tmp_path / "out"), *OPTIONS]) == 0
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    before = json.loads((report / "summary.json").read_text())
    assert s["grid"] == before["grid"] and s["fit"] == before["fit"]
    assert s["optimal_fraction"] == before["optimal_fraction"]
    r = s["data_repetition"]
    assert r["part_of_split_runs"] == 2 and r["pairs"]["unpaired"] == 0
    assert [p["diff"] for p in r["pairs"]["pairs"]] == pytest.approx([0.01, 0.01])
    for size in r["gap_trend"]["sizes"]:
        assert size["slope_per_doubling"] == pytest.approx(GAP_SLOPE, abs=1e-6)
        assert size["verdict"] == "grows"
    md = (tmp_path / "out" / "summary.md").read_text()
    assert "Part of the train split against all of it" in md and "+0.0100" in md


def test_float_format_runs_are_left_to_the_formats_report(runs_csv, report, tmp_path, caplog):
    """Rows of a float format (the same cells again as MXFP4, with other losses) leave the
    report as it is on the integer family alone, and one line says so."""
    runs = pd.read_csv(runs_csv).assign(format="int")
    qat = runs[runs.B < 16]
    floats = qat.assign(format="mxfp4", B=4.25, loss=qat.loss * 1.01)
    path = tmp_path / "runs.csv"
    pd.concat([runs, floats], ignore_index=True).to_csv(path, index=False)
    with caplog.at_level("INFO", logger="analysis.repro"):
        assert repro.main(["--runs", str(path), "--out", str(tmp_path / "out"), *OPTIONS]) == 0
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    before = json.loads((report / "summary.json").read_text())
    assert s["fit"] == before["fit"] and s["optimal_fraction"] == before["optimal_fraction"]
    assert f"left out {len(floats)} runs of float formats" in caplog.text
