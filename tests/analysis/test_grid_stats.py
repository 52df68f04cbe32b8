"""`analysis.grid_stats` on synthetic grids whose answer is known from the hidden law."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis.collect import prepare
from analysis.grid_stats import (
    FRAC_TOL,
    cell_fraction,
    extra_tokens,
    grid_shape,
    held_out,
    optimal_fractions,
    predictor_fit,
    qat_rows,
    rank_trend,
    wasted_compute,
)
from analysis.predict import PAPER_A, empirical_optima, loss_at, optimal_fraction, wasted_tokens
from tests.analysis.helpers import HIDDEN_LAW, pipelines_grid

SIZES = (5e5, 1.5e6, 4e6, 1e7)
BITS = (1.0, 4.0)
TOKENS_PER_PARAM = (25.0, 100.0, 400.0)
# Symmetric about 0.5: mirroring a grid (f → 1 − f) keeps its fractions.
FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def mirrored(runs: pd.DataFrame) -> pd.DataFrame:
    """The grid with each QAT run's FP and QAT tokens swapped, its loss kept: every cell's loss
    curve over the fraction is reflected, so its best fraction f* becomes 1 − f*."""
    q = runs.B < 16
    out = runs.copy()
    out.loc[q, "D_fp"], out.loc[q, "D_qat"] = runs.D_qat[q], runs.D_fp[q]
    out.loc[q, "qat_frac"] = 1 - runs.qat_frac[q]
    return prepare(out)


def test_fractions_prefer_the_configured_value():
    runs = prepare(
        pd.DataFrame({"N": [1e6], "D_fp": [0.9004e7], "D_qat": [0.0996e7], "B": [2], "loss": [3.0]})
    )
    assert cell_fraction(runs).iloc[0] == pytest.approx(0.0996)
    assert cell_fraction(runs.assign(qat_frac=0.1)).iloc[0] == 0.1


def test_qat_rows_split_the_pipelines_and_skip_runs_without_both_phases():
    runs = prepare(
        pd.DataFrame(
            {
                "N": [1e6] * 5,
                "B": [2.0, 2.0, 16.0, 2.0, 2.0],
                "D_fp": [8e6, 8e6, 1e7, 0.0, 1e7],
                "D_qat": [2e6, 2e6, 0.0, 1e7, 0.0],
                "fusion": [False, True, False, False, False],
                "loss": [3.0, 2.9, 2.8, 3.5, 3.6],
            }
        )
    )
    classic, fused = qat_rows(runs, False), qat_rows(runs, True)
    assert classic.loss.tolist() == [3.0] and fused.loss.tolist() == [2.9]
    assert classic.frac.tolist() == [0.2]


def test_grid_shape_counts_and_axes():
    runs = prepare(
        pipelines_grid((1e6, 2e6), (2.0, 4.0), (20.0, 100.0), (0.1, 0.3, 0.5), fused=(0.1, 0.3))
    )
    g = grid_shape(runs)
    assert (g["runs"], g["classic_qat"], g["fused_qat"], g["fp_only"]) == (44, 24, 16, 4)
    assert g["sizes"] == [1e6, 2e6] and g["bits"] == [2.0, 4.0]
    assert g["budgets"] == [2e7, 4e7, 1e8, 2e8] and g["tokens_per_param"] == [20.0, 100.0]
    assert g["fractions_classic"] == [0.1, 0.3, 0.5] and g["fractions_fused"] == [0.1, 0.3]


@pytest.mark.parametrize(("sign", "direction"), [(1, "grows"), (-1, "falls")])
def test_rank_trend_of_monotone_data_is_plus_or_minus_one(sign, direction):
    x = pd.Series([10.0, 100.0, 1e3, 1e4])
    t = rank_trend(x, sign * np.log(x))
    assert t["rho"] == pytest.approx(sign) and t["direction"] == direction and t["n"] == 4


def test_rank_trend_needs_three_varying_cells():
    assert rank_trend(pd.Series([1.0, 2.0]), pd.Series([0.1, 0.2]))["direction"] == ("undetermined")
    flat = rank_trend(pd.Series([1.0, 2.0, 3.0]), pd.Series([0.2, 0.2, 0.2]))
    assert flat["rho"] is None and "no variation" in flat["why"]


def test_rank_trend_of_the_best_fraction_follows_the_grid():
    # The hidden law's f* grows with S; in the mirrored grid every f* is 1 − f*, so it falls.
    runs = prepare(pipelines_grid(SIZES[:2], (1.0, 2.0, 4.0), (10.0, 50.0, 200.0, 1e3), FRACTIONS))
    rising, falling = empirical_optima(runs), empirical_optima(mirrored(runs))
    assert (rising.qat_frac + falling.qat_frac).to_numpy() == pytest.approx(1.0)
    up = rank_trend(rising.S_total, rising.qat_frac)
    down = rank_trend(falling.S_total, falling.qat_frac)
    assert up["direction"] == "grows" and up["rho"] > 0.9 and up["p_value"] < 1e-6
    assert down["direction"] == "falls" and down["rho"] == pytest.approx(-up["rho"])


def test_predictor_fit_recovers_the_constant():
    S = pd.Series([0.5, 20.0, 100.0, 1e3, 1e4])
    f = np.exp(-5.0 / np.log(S.clip(lower=2.0)))  # the S <= 1 point is left out whatever it is
    p = predictor_fit(S, f)
    assert p["a"] == pytest.approx(5.0, rel=1e-6) and p["n"] == 4
    assert p["mae"] < 1e-6 and p["a_over_paper"] == pytest.approx(5.0 / PAPER_A, rel=1e-6)
    assert p["paper_mae"] > 0.01  # the paper's a is not 5: its error shows
    assert predictor_fit(S[:1], f[:1]) == {"a": None, "n": 0, "why": "no cell with S_total > 1"}


def test_optimal_fractions_follow_the_runs_not_the_law():
    runs = prepare(pipelines_grid(SIZES[:2], BITS, TOKENS_PER_PARAM, FRACTIONS))
    o = optimal_fractions(runs, HIDDEN_LAW)
    assert o["available"] and len(o["cells"]) == 12
    for c in o["cells"]:
        assert c["law_frac"] == pytest.approx(
            optimal_fraction(HIDDEN_LAW, c["N"], c["D_total"], c["B"])[0]
        )
        assert abs(c["qat_frac"] - c["law_frac"]) <= 0.05  # the grid's step is 0.1
    assert o["trend_runs"]["direction"] == o["trend_law"]["direction"] == "grows"
    assert set(o["trend_runs_by_bits"]) == {"1", "4"}
    # Mirrored runs: the runs' trend turns, the law's (the same law) does not.
    m = optimal_fractions(mirrored(runs), HIDDEN_LAW)
    assert m["trend_runs"]["direction"] == "falls" and m["trend_law"] == o["trend_law"]
    sparse = prepare(pipelines_grid(SIZES[:2], BITS, TOKENS_PER_PARAM, (0.2, 0.5)))
    assert optimal_fractions(sparse, HIDDEN_LAW) == {
        "available": False,
        "why": "no (N, D_total, B) cell has >= 3 classic QAT fractions",
    }


def test_held_out_recovers_the_hidden_law_and_sees_a_shifted_size():
    runs = prepare(pipelines_grid(SIZES, BITS, TOKENS_PER_PARAM, (0.1, 0.3, 0.6)))
    h = held_out(runs, starts=200, workers=1)
    assert h["available"] and h["held_out_N"] == 1e7
    assert (h["train_points"], h["test_points"]) == (54, 18) and set(h["by_bits"]) == {"1", "4"}
    assert h["r2"] > 0.9999 and h["max_rel_error"] < 1e-4
    # One size's losses 3% above the law: held out, the refit (on the others) misses it by that.
    shifted = runs.assign(loss=runs.loss.where(~np.isclose(runs.N, 1.5e6), 1.03 * runs.loss))
    s = held_out(shifted, size=1.5e6, starts=200, workers=1)
    assert s["held_out_N"] == 1.5e6 and s["test_points"] == 18
    assert s["mean_rel_error"] == pytest.approx(1 - 1 / 1.03, abs=1e-4)
    assert held_out(runs, size=3e6)["why"] == "no classic QAT runs at N = 3e+06"
    one = runs[np.isclose(runs.N, 1e7)]
    assert not held_out(one)["available"]


def test_extra_tokens_inverts_the_law():
    n, d, b, f = 2e6, 2e8, 2.0, 0.3
    at_twice = float(loss_at(HIDDEN_LAW, n, 2 * d, b, f))
    assert extra_tokens(HIDDEN_LAW, n, d, b, f, at_twice) == pytest.approx(1.0, rel=1e-8)
    assert extra_tokens(HIDDEN_LAW, n, d, b, f, float(loss_at(HIDDEN_LAW, n, d, b, f))) == (
        pytest.approx(0.0, abs=1e-9)
    )
    assert extra_tokens(HIDDEN_LAW, n, d, b, f, 0.0) is None  # below the law's floor


def cells_with_the_optimum(fracs: tuple[float, ...]) -> pd.DataFrame:
    """Per (N, D_total, B): runs at `fracs` and at the law's own optimal fraction, losses from
    the law without noise, so the best run is the law's optimum."""
    rows = []
    for n in (1e6, 4e6):
        for b in (2.0, 4.0):
            for r in (25.0, 400.0):
                d = r * n
                f_opt, _ = optimal_fraction(HIDDEN_LAW, n, d, b)
                assert abs(f_opt - 0.1) > FRAC_TOL  # premise: the optimum is not "at 0.1"
                for f in (*fracs, f_opt):
                    rows.append(
                        {"N": n, "B": b, "D_fp": (1 - f) * d, "D_qat": f * d, "qat_frac": f}
                    )
    runs = pd.DataFrame(rows)
    runs["loss"] = loss_at(HIDDEN_LAW, runs.N, runs.D_fp + runs.D_qat, runs.B, runs.qat_frac)
    return prepare(runs)


def test_wasted_compute_of_runs_at_the_optimum_equals_the_law():
    runs = cells_with_the_optimum((0.1, 0.8))
    w = wasted_compute(runs, HIDDEN_LAW, 0.1)
    assert w["frac"] == 0.1 and w["note"] is None and set(w["by_bits"]) == {"2", "4"}
    for cell in w["cells"]:
        n, d, b = cell["N"], cell["D_total"], cell["B"]
        law = wasted_tokens(HIDDEN_LAW, n, d, b, 0.1)
        assert cell["law_wasted"] == law > 0
        # The best run is the law's optimum: the runs' gap is the law's, and so are its tokens.
        gap = float(loss_at(HIDDEN_LAW, n, d, b, 0.1)) - optimal_fraction(HIDDEN_LAW, n, d, b)[1]
        assert cell["runs_gap"] == pytest.approx(gap, rel=1e-6)
        assert cell["runs_wasted"] == pytest.approx(law, rel=1e-6)
    for b, e in w["by_bits"].items():
        g = [c for c in w["cells"] if f"{c['B']:g}" == b]
        assert e["cells"] == e["runs_cells"] == 4 and e["runs_frac_is_best"] == 0
        assert e["law_wasted_pct_mean"] == pytest.approx(
            100 * np.mean([c["law_wasted"] for c in g])
        )
        assert e["runs_wasted_pct_mean"] == pytest.approx(e["law_wasted_pct_mean"], rel=1e-6)
    # 0.8 has the fewest FP tokens: it wastes more than 0.1 in every cell.
    eight = wasted_compute(runs, HIDDEN_LAW, 0.8)
    assert all(
        hi["law_wasted"] > lo["law_wasted"]
        for hi, lo in zip(eight["cells"], w["cells"], strict=True)
    )


def test_wasted_compute_without_runs_at_the_fraction_has_only_the_law():
    w = wasted_compute(cells_with_the_optimum((0.5, 0.8)), HIDDEN_LAW, 0.1)
    assert w["note"] == "the grid has no classic runs at fraction 0.1"
    assert all(e["runs_cells"] == 0 and "runs_gap_mean" not in e for e in w["by_bits"].values())
