"""The formats report (`analysis.format_stats`, `python -m analysis.formats`): on grids drawn from
a hidden law whose format factors are known, it finds which format is better and in which
direction f* moves; the CLI writes every file byte for byte again on a rerun; a table it cannot
compare formats on is refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from analysis import formats, predict
from analysis.collect import prepare
from analysis.format_stats import (
    compare_pair,
    equal_memory,
    format_optima,
    format_pairs,
    format_rows,
)
from analysis.law import QAT, FittedLaw
from analysis.synthetic import format_grid, format_params, qat_grid
from tests.analysis.helpers import rebuild_committed, same_law_and_plots

# FP4 e2m1 truly worse than INT4 at the same 4 bits, and with a larger optimal QAT fraction: a
# larger irreducible error and pure QAT penalty (which QAT tokens pay off), a smaller FP/QAT
# interaction (which FP tokens pay off). FP8 e4m3 is INT8 exactly: no winner, no f* shift.
FACTORS = {
    "fp4_e2m1": {"theta": 3.0, "phi": 3.0, "lambda": 0.3},
    "mxfp4": {"theta": 0.8, "phi": 0.8, "lambda": 1.0},
    "fp8_e4m3": {"theta": 1.0, "phi": 1.0, "lambda": 1.0},
}
AXES = {"sizes": (5e7, 2e8), "bits": (4.0, 8.0), "tokens_per_param": (10.0, 60.0, 400.0)}
FRACTIONS = (0.1, 0.2, 0.35, 0.5, 0.65, 0.8)
HIDDEN = FittedLaw(QAT.with_formats(("int", *FACTORS)), format_params(FACTORS), 1.0, {}, 0, {})
FACTORS_OF_ONE = {"mxfp4": {"theta": 1.0, "phi": 1.0, "lambda": 1.0}}
CLI_OPTIONS = ["--starts", "20", "--fp-starts", "30", "--workers", "1"]


@pytest.fixture(scope="module")
def grid() -> pd.DataFrame:
    return format_grid(FACTORS, **AXES, fractions=FRACTIONS, noise=3e-4, seed=1, fp_rows=True)


@pytest.fixture(scope="module")
def optima(grid):
    return format_optima(format_rows(prepare(grid)))


def test_the_report_finds_the_worse_format_and_the_direction_of_its_f_star(optima):
    cells = [(n, d) for n in AXES["sizes"] for d in (r * n for r in AXES["tokens_per_param"])]
    # The truth, from the hidden law at each cell.
    true_gap = [
        predict.optimal_fraction(HIDDEN, n, d, 4.0, "int")[1]
        - predict.optimal_fraction(HIDDEN, n, d, 4.0, "fp4_e2m1")[1]
        for n, d in cells
    ]
    true_shift = [
        predict.optimal_fraction(HIDDEN, n, d, 4.0, "int")[0]
        - predict.optimal_fraction(HIDDEN, n, d, 4.0, "fp4_e2m1")[0]
        for n, d in cells
    ]
    assert sum(true_gap) < 0 and all(s < -0.1 for s in true_shift)  # INT4 better, smaller f*

    assert ("int4", "fp4_e2m1") in format_pairs(optima)
    c = compare_pair(optima, "int4", "fp4_e2m1")
    assert c["equal_bits"] and c["cells"] == len(cells)
    assert c["better"] == "int4" and c["loss_gap"]["hi"] < 0
    assert c["f_differs"] and c["f_diff"]["hi"] < 0 and c["f_smaller"] > c["f_larger"]

    same = compare_pair(optima, "int8", "fp8_e4m3")
    assert same["better"] is None and not same["f_differs"]


def test_a_short_qat_phase_tells_formats_apart_where_f_star_cannot():
    """Fractions all below both formats' optima: f* sits at the grid's top fraction for every
    cell and cannot tell INT4 from FP4, but what the lowest fraction costs each format against
    its best still shows which needs more QAT, as the hidden law says."""
    low = (0.02, 0.05, 0.1)
    grid = format_grid(FACTORS, **AXES, fractions=low, noise=3e-4, seed=2)
    opt = format_optima(format_rows(prepare(grid)))
    pair = opt.cells[opt.cells.label.isin(["int4", "fp4_e2m1"])]
    assert (pair.censored == "high").all()
    c = compare_pair(opt, "int4", "fp4_e2m1")
    assert not c["f_differs"] and c["f_equal"] == c["cells"]

    short = c["short_qat"]
    assert short["fractions"] == [0.02] and short["cells"] == c["cells"]
    assert short["differs"] and short["diff"]["hi"] < 0 and short["b_steeper"] == short["cells"]
    cells = [(n, d) for n in AXES["sizes"] for d in (r * n for r in AXES["tokens_per_param"])]

    def true_penalty(fmt: str) -> float:
        losses = [predict.loss_at(HIDDEN, n, d, 4.0, low, fmt) for n, d in cells]
        return sum(v[0] / v.min() - 1 for v in losses) / len(cells)

    truth = true_penalty("int") - true_penalty("fp4_e2m1")
    assert short["diff"]["lo"] < truth < short["diff"]["hi"]
    assert not compare_pair(opt, "int8", "fp8_e4m3")["short_qat"]["differs"]


def test_formats_of_other_bits_per_weight_meet_at_equal_memory(optima):
    """MXFP4 stores 4.25 bits per weight: at the memory of an N-parameter INT4 model it has
    N·4/4.25 parameters and, at the same compute, D·4.25/4 tokens."""
    em = equal_memory(HIDDEN, optima)["4"]
    assert em["reference_bits"] == 4.0
    cell = em["cells"][0]
    n, d = cell["N"], cell["D_total"]
    assert cell["losses"]["int4"] == pytest.approx(
        predict.optimal_fraction(HIDDEN, n, d, 4.0, "int")[1]
    )
    assert cell["losses"]["mxfp4"] == pytest.approx(
        predict.optimal_fraction(HIDDEN, n * 4 / 4.25, d * 4.25 / 4, 4.25, "mxfp4")[1]
    )


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_the_cli_writes_the_report_again_byte_for_byte(grid, tmp_path):
    # One size's runs (three cells per format), with every FP run for the law's anchor.
    small = grid[grid.N.eq(AXES["sizes"][0]) | (grid.B >= 16)]
    runs = tmp_path / "runs.csv"
    small.to_csv(runs, index=False)
    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
        assert formats.main(["--runs", str(runs), "--out", str(out), *CLI_OPTIONS]) == 0
    first, second = (_files(o) for o in outs)
    assert first == second
    budgets = len(AXES["tokens_per_param"])
    plots = [f for f in first if f.startswith("plots/loss_vs_fraction_")]
    assert len(plots) == budgets
    assert {"summary.md", "summary.json", "law.json", "plots/f_star_vs_s.png"} <= set(first)
    assert "plots/loss_vs_bits.png" in first
    summary = json.loads(first["summary.json"])
    labels = {"int4", "fp4_e2m1", "mxfp4", "int8", "fp8_e4m3"}
    assert {f["label"] for f in summary["grid"]["formats"]} == labels
    assert set(summary["law"]["r2_by_label"]) == labels
    assert json.loads(first["law.json"])["formats"] == ["int", "fp4_e2m1", "fp8_e4m3", "mxfp4"]
    md = first["summary.md"].decode()
    assert "| int4 vs fp4_e2m1 | 4 / 4 | 3 |" in md and "**int4's f* is smaller**" in md


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (qat_grid(sizes=(5e7,), bits=(4.0,), tokens_per_param=(10.0,)), "no float-format runs"),
        (
            format_grid(FACTORS_OF_ONE, sizes=(5e7,), bits=(), tokens_per_param=(10.0,)),
            "one format only (mxfp4)",
        ),
        (
            format_grid(FACTORS, sizes=(5e7,), bits=(4.0,), fractions=(0.2, 0.5)),
            "no (N, D_total, format) cell has >= 3 QAT fractions",
        ),
    ],
    ids=["integer-only", "one-format", "two-fractions"],
)
def test_a_table_without_formats_to_compare_is_refused_in_one_line(
    table, message, tmp_path, capsys
):
    runs = tmp_path / "runs.csv"
    table.to_csv(runs, index=False)
    out = tmp_path / "out"
    assert formats.main(["--runs", str(runs), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not out.exists()


def test_the_committed_formats_results_are_rebuilt_from_their_runs_table(tmp_path, monkeypatch):
    """`make formats-report` on results/formats/runs.csv gives back the committed report's data
    facts: the grid, every (N, D, format) cell's f* and loss there, the runs' pairwise verdicts
    and the same plots. The law's values are not compared, as for the repro report: a multi-start
    fit may land elsewhere with another CPU's floating-point kernels."""
    now, then, committed = rebuild_committed("formats", formats.main, tmp_path, monkeypatch)
    assert now["grid"] == then["grid"]
    exact = ("N", "D_total", "format", "B", "f_star", "censored")
    assert [[c[k] for k in exact] for c in now["cells"]] == [
        [c[k] for k in exact] for c in then["cells"]
    ]
    losses = [c["loss_star"] for c in now["cells"]]
    assert losses == pytest.approx([c["loss_star"] for c in then["cells"]], rel=1e-9)
    verdicts = ("a", "b", "cells", "a_wins", "b_wins", "better", "f_larger", "f_smaller", "f_equal")
    assert [[p[k] for k in verdicts] for p in now["comparisons"]] == [
        [p[k] for k in verdicts] for p in then["comparisons"]
    ]
    same_law_and_plots(tmp_path, committed)
