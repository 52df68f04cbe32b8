"""`python -m reports.mini` on a mini-shaped synthetic grid drawn from a known law.

Every expected value is computed here from the generating law (`TRUE_QAT_PARAMS` and the fused
pipeline's known FP-token gain), never copied from an earlier run of the analysis.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import fit_law
from analysis.collect import prepare
from analysis.fit import fit
from analysis.fusion_stats import matched_cells
from analysis.grid_stats import rank_trend, wasted_compute
from analysis.predict import empirical_optima, fit_predictor, law_optima, wasted_tokens
from reports import mini
from tests.analysis.helpers import HIDDEN_LAW as TRUE
from tests.analysis.helpers import pipelines_grid, run_module

# The mini grid: 4 sizes (0.5M-10M non-embedding), bits 1/2/4/6 (+ FP-only rows),
# 3 budgets, 6 classic fractions, 3 fused fractions.
SIZES = (5e5, 1.5e6, 4e6, 1e7)
BITS = (1.0, 2.0, 4.0, 6.0)
TOKENS_PER_PARAM = (25.0, 100.0, 400.0)
CLASSIC = (0.05, 0.1, 0.2, 0.3, 0.45, 0.6)
FUSED = (0.1, 0.2, 0.3)
NOISE = 5e-4  # relative: 2.5-5.5 millinats on these losses, an eval on a few M tokens
FP_GAIN = 0.05  # fused: the FP phase's tokens count 5% more
STARTS = "200"
PLOTS = ("optimal_fraction", "wasted_tokens", "iso_loss", "loss_vs_fraction", "best_bits")


def grid(
    sizes=SIZES, classic=CLASSIC, fused=FUSED, fp_gain=FP_GAIN, noise=NOISE, seed=0
) -> pd.DataFrame:
    return pipelines_grid(sizes, BITS, TOKENS_PER_PARAM, classic, fused, fp_gain, noise, seed)


@pytest.fixture(scope="module")
def analysed(tmp_path_factory) -> tuple[Path, dict, dict[str, bytes]]:
    """The grid as runs.csv, `reports.mini` run on it, and its files' bytes."""
    root = tmp_path_factory.mktemp("mini")
    grid().to_csv(root / "runs.csv", index=False)
    out = root / "out"
    args = [str(root / "runs.csv"), "--out", str(out), "--starts", STARTS, "--workers", "2"]
    assert mini.main(args) == 0
    files = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    return root, json.loads((out / "summary.json").read_text("utf-8")), files


def truth_cells() -> pd.DataFrame:
    """The generating law without noise at the classic grid: best grid fraction per cell."""
    runs = prepare(grid(fused=(), noise=0.0))
    return runs[runs.B < 16]


def test_files_and_law_fit(analysed):
    _, s, files = analysed
    assert {"summary.json", "summary.md", "law.json", "law.md", "residuals.csv"} <= set(files)
    for name in PLOTS:
        assert len(files[f"plots/{name}.png"]) > 1000 and len(files[f"plots/{name}.pdf"]) > 1000
    g = s["grid"]
    assert (g["classic_qat"], g["fused_qat"], g["fp_only"]) == (288, 144, 12)
    assert g["tokens_per_param"] == list(TOKENS_PER_PARAM)
    f = s["fit"]
    assert f["n_points"] == 288 and set(f["r2_by_bits"]) == {"1", "2", "4", "6"}
    assert f["r2"] > 0.999 and min(f["r2_by_bits"].values()) > 0.999
    assert f["mean_rel_error"] < 3 * NOISE  # the noise is the floor
    assert "fused pipeline (fusion=True): the law is fitted to the classic pipeline" in str(
        f["dropped_rows"]
    )
    h = s["held_out"]
    assert h["available"] and h["held_out_N"] == max(SIZES)
    assert h["test_points"] == 72 and h["train_points"] == 216
    assert h["r2"] > 0.99 and h["mean_rel_error"] < 0.005
    md = files["summary.md"].decode()
    assert "Held out: refit without N = 1e+07" in md and "## 4. Fused vs classic" in md


def test_predictor_constant_and_trend_follow_the_generating_law(analysed):
    _, s, _ = analysed
    o = s["optimal_fraction"]
    assert o["available"] and o["paper_a"] == 6.7297
    # The law's optima: the fitted law's a against the generating law's at the same cells.
    true_opt = law_optima(TRUE, empirical_optima(truth_cells()))
    a_true, _ = fit_predictor(true_opt.S_total, true_opt.qat_frac)
    assert o["predictor_law"]["a"] == pytest.approx(a_true, rel=0.05)
    # The runs' best fractions: against the noise-free best grid fraction of every cell.
    discrete = empirical_optima(truth_cells())
    a_discrete, _ = fit_predictor(discrete.S_total, discrete.qat_frac)
    assert o["predictor_runs"]["a"] == pytest.approx(a_discrete, rel=0.1)
    assert o["predictor_runs"]["n"] == len(discrete) == 48
    # The generating law's f* grows with S; so must the runs' and the fitted law's.
    assert rank_trend(true_opt.S_total, true_opt.qat_frac)["rho"] > 0.9
    runs, law = o["trend_runs"], o["trend_law"]
    assert runs["direction"] == "grows" and runs["p_value"] < 0.01 and runs["n"] == 48
    assert law["direction"] == "grows" and law["rho"] > 0.9


def test_wasted_compute_per_bit_width_matches_the_generating_law(analysed):
    _, s, _ = analysed
    w = s["wasted_compute"]
    assert w["frac"] == 0.1 and w["note"] is None
    cells = truth_cells().groupby(["N", "D_total", "B"]).size().reset_index()
    true_law = {
        b: 100 * np.mean([wasted_tokens(TRUE, r.N, r.D_total, r.B, 0.1) for r in g.itertuples()])
        for b, g in cells.groupby("B")
    }
    # Noise-free runs: the gap of 0.1 to the best grid fraction, in tokens at the law's rate.
    true_runs = wasted_compute(truth_cells(), TRUE)["by_bits"]
    reported = [w["by_bits"][f"{b:g}"] for b in BITS]
    runs = truth_cells()
    for b, e in zip(BITS, reported, strict=True):
        assert e["cells"] == 12 and e["runs_cells"] == 12
        assert e["law_wasted_pct_mean"] == pytest.approx(true_law[b], rel=0.15, abs=0.1)
        assert e["law_wasted_pct_min"] <= e["law_wasted_pct_mean"] <= e["law_wasted_pct_max"]
        # The runs' gap is the generating law's up to the noise, σ ≈ NOISE · loss: a bias of
        # about +1.3σ (the best of 6 noisy runs is too low), spread shrinking over 12 cells.
        expected = true_runs[f"{b:g}"]
        sigma = NOISE * runs.query("B == @b").loss.mean()
        assert abs(e["runs_gap_mean"] - expected["runs_gap_mean"]) <= 2.5 * sigma
        if expected["runs_gap_mean"] > 5 * sigma:  # signal well above noise: 1 and 2 bits
            assert e["runs_wasted_pct_mean"] == pytest.approx(
                expected["runs_wasted_pct_mean"], rel=0.3
            )
    law_means = [e["law_wasted_pct_mean"] for e in reported]
    assert law_means == sorted(law_means, reverse=True)  # fewer bits waste more


def test_fusion_statistics_match_the_generating_gain(analysed):
    _, s, _ = analysed
    u = s["fusion"]
    assert u["available"]
    cells = prepare(grid(fused=FUSED, noise=0.0))
    true_diff = matched_cells(cells)
    assert len(true_diff) == 144 and (true_diff["diff"] < 0).all()  # the law: fused better
    for b, g in true_diff.groupby("B"):
        e = u["by_bits"][f"{b:g}"]
        assert e["cells"] == 36
        assert abs(e["mean_diff"] - g["diff"].mean()) < 3 * e["std_err"]
        assert e["fused_wins"] >= 0.9 * e["cells"]
        assert e["verdict"] == "fused better" and e["matches_paper"] is True
        assert e["tokens_saved_pct_mean"] > 0
    assert u["overall"]["cells"] == 144 and u["overall"]["matches_paper"] is True


def test_make_fit_law_reproduces_the_law_files(analysed):
    root, _, files = analysed
    out = root / "out"
    code = fit_law.main(
        [
            "--csv",
            str(root / "runs.csv"),
            "--out",
            str(out),
            "--starts",
            STARTS,
            "--workers",
            "2",
            "--no-mlflow",
        ]
    )
    assert code == 0
    after = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert set(after) == set(files)
    differ = [name for name in files if after[name] != files[name]]
    assert differ == []  # law.json, residuals.csv, plots, law.md; summary.* untouched


def test_degenerate_grid_is_reported_not_a_crash(tmp_path):
    # One model, two fractions, none at 0.1, no fused runs.
    runs = prepare(grid(sizes=(1e6,), classic=(0.2, 0.5), fused=()))
    result = fit(runs, "qat", starts=20, workers=1)
    summary = mini.summarize(runs, result, "file:x.csv", starts=20, workers=1)
    mini.write_summary(summary, tmp_path)
    md = (tmp_path / "summary.md").read_text("utf-8")
    assert (
        "Held out: not available (needs >= 2 model sizes among the classic QAT runs; found 1)" in md
    )
    assert "Not available: no (N, D_total, B) cell has >= 3 classic QAT fractions." in md
    assert "Runs: the grid has no classic runs at fraction 0.1." in md
    assert "Not available: no fused QAT runs (fusion=True) in the table." in md
    data = json.loads((tmp_path / "summary.json").read_text("utf-8"))
    assert data["held_out"]["available"] is False and data["fusion"]["available"] is False


def test_cli_errors_are_one_line(tmp_path, capsys):
    grid(classic=(0.2,), fused=()).query("B >= 16").to_csv(tmp_path / "fp.csv", index=False)
    assert mini.main([str(tmp_path / "fp.csv"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: runs file") and "has no classic QAT runs" in err
    assert "\n" not in err
    assert mini.main([str(tmp_path / "missing.csv"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    # The entry point the Makefile runs.
    fp = str(tmp_path / "fp.csv")
    proc = run_module("reports.mini", fp, "--out", str(tmp_path / "o"), cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith("error: runs file")


def test_float_format_runs_are_left_to_the_formats_report(tmp_path, capsys, caplog):
    # Every QAT run in a float format: nothing of the integer family is left to fit.
    runs = grid(sizes=(1e6,), classic=(0.2, 0.5), fused=()).query("B == 4 or B >= 16").copy()
    runs["format"] = np.where(runs.B < 16, "fp4_e2m1", "int")
    runs.to_csv(tmp_path / "floats.csv", index=False)
    with caplog.at_level("INFO", logger="reports.mini"):
        assert mini.main([str(tmp_path / "floats.csv"), "--out", str(tmp_path / "o")]) == 2
    assert f"left out {int((runs.B < 16).sum())} runs of float formats" in caplog.text
    assert "has no classic QAT runs" in capsys.readouterr().err
