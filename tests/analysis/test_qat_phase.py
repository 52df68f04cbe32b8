"""The QAT phase's knobs report (`analysis.qat_phase_stats`, `python -m analysis.qat_phase`): on a
grid drawn from a hidden law in which the lower QAT peak moves f* by a known amount and resetting
Adam's moments does nothing, it returns those verdicts; the CLI writes every file byte for byte
again on a rerun; a table it cannot compare variants on is refused in one line."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from analysis import qat_phase
from analysis.collect import prepare
from analysis.law import QAT
from analysis.qat_phase_stats import (
    compare_all,
    knob_verdicts,
    phase_optima,
    phase_rows,
    variant_order,
)
from analysis.synthetic import TRUE_QAT_PARAMS, qat_phase_grid

# At a QAT peak of 0.3× the QAT tokens count half: on this law f* moves down, the loss up.
FACTORS = {1.0: 1.0, 0.3: 0.5}
FRACTIONS = np.array([0.05, 0.1, 0.2, 0.35, 0.5, 0.65, 0.8, 0.9])
SMALL = {"sizes": (5e7, 2e8)}


def true_shift(grid: pd.DataFrame, factor: float) -> float:
    """The mean over cells of the noise-free law's grid f* at `factor` minus at 1."""
    shifts = []
    for (n, d, b), _ in grid.groupby(["N", "D_total", "B"]):
        f_star = [
            FRACTIONS[
                np.argmin(QAT.loss(TRUE_QAT_PARAMS, n, (1 - FRACTIONS) * d, FRACTIONS * d * g, b))
            ]
            for g in (factor, 1.0)
        ]
        shifts.append(f_star[0] - f_star[1])
    return float(np.mean(shifts))


def test_the_knobs_verdicts_are_recovered_from_a_hidden_law():
    grid = prepare(qat_phase_grid(FACTORS))
    rows = phase_rows(grid, "synthetic")
    comparisons = compare_all(phase_optima(rows), variant_order(rows))
    verdicts = knob_verdicts(comparisons)
    [lower] = verdicts["qat_lr_ratio"]
    assert lower["variant"] == "peak ×0.3, moments kept" and lower["cells"] == 16
    assert lower["f_verdict"] == "moves f* down"
    assert lower["loss_verdict"] == "raises the loss at f*"
    [reset] = verdicts["qat_reset_moments"]
    assert reset["f_verdict"] == "no clear shift of f*"
    assert reset["loss_verdict"] == "no clear change"
    by_variant = {c["variant"]: c for c in comparisons}
    shift = by_variant["peak ×0.3, moments kept"]["f_shift"]
    expected = true_shift(grid, 0.5)
    assert expected < -0.1  # the hidden law's shift is real, not noise
    assert shift["lo"] <= expected <= shift["hi"]
    both = by_variant["peak ×0.3, moments reset"]
    assert both["changes"] == ["qat_lr_ratio", "qat_reset_moments"]
    assert both["f_smaller"] == 16 and both["sign_test_p"] < 1e-3


def test_the_report_is_rebuilt_byte_for_byte(tmp_path):
    runs = tmp_path / "runs.csv"
    qat_phase_grid(FACTORS, **SMALL).to_csv(runs, index=False)
    for out in ("a", "b"):
        assert qat_phase.main(["--runs", str(runs), "--out", str(tmp_path / out)]) == 0
    names = ["summary.md", "summary.json", "plots/loss_vs_fraction.png"]
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["knobs"]["qat_lr_ratio"][0]["f_verdict"] == "moves f* down"
    md = (tmp_path / "a" / "summary.md").read_text()
    assert "peak ×0.3, moments kept (8 cells): **moves f* down**" in md


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("old", r"lacks the QAT phase's knob columns \['qat_lr_ratio', 'qat_reset_moments'\]"),
        ("one", r"has runs of one QAT-phase variant only \(peak ×1, moments kept\)"),
        ("no-baseline", r"has no baseline runs \(peak ×1, moments kept\)"),
    ],
)
def test_tables_that_cannot_compare_variants_are_refused(table, message, tmp_path, capsys):
    grid = qat_phase_grid(FACTORS, sizes=(5e7,), tokens_per_param=(80.0,))
    if table == "old":  # a table collected before the knob columns
        grid = grid.drop(columns=["qat_lr_ratio", "qat_reset_moments"])
    elif table == "one":
        grid = grid[(grid.qat_lr_ratio == 1.0) & ~grid.qat_reset_moments]
    else:
        grid = grid[grid.qat_lr_ratio != 1.0]
    runs, out = tmp_path / "runs.csv", tmp_path / "out"
    grid.to_csv(runs, index=False)
    assert qat_phase.main(["--runs", str(runs), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert re.search(message, err)
    assert not out.exists()


@pytest.mark.parametrize("seed", [0, 1])
def test_the_verdicts_hold_at_the_grids_own_shape(seed):
    """One size × 2 budgets × 2 bit widths: 4 cells per variant, as grid=repro-qat-phase has."""
    grid = prepare(qat_phase_grid(FACTORS, sizes=(5e7,), seed=seed))
    rows = phase_rows(grid, "synthetic")
    opt = phase_optima(rows, seed=seed)
    verdicts = knob_verdicts(compare_all(opt, variant_order(rows), seed=seed))
    assert [v["cells"] for v in verdicts["qat_lr_ratio"]] == [4]
    assert verdicts["qat_lr_ratio"][0]["f_verdict"] == "moves f* down"
    assert verdicts["qat_reset_moments"][0]["f_verdict"] == "no clear shift of f*"
