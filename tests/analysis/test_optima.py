"""The runs' f* per cell, its intervals, censoring, trend with S and the predictor constant a,
recovered from synthetic grids whose hidden law has f* rising with S."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis.law import QAT
from analysis.optima import cell_optima, optimum_trend, size_pairs, subset
from analysis.predict import fit_predictor
from analysis.synthetic import TRUE_QAT_PARAMS, seeded_grid

FRACTIONS = (0.05, 0.1, 0.2, 0.3, 0.45, 0.6, 0.8)
GRID = {
    "sizes": (5e7, 2e8),
    "bits": (1, 2, 4, 6),
    "tokens_per_param": (10, 40, 160, 640),
    "fractions": FRACTIONS,
}


def hidden_optimum(cells: pd.DataFrame, fractions=FRACTIONS) -> np.ndarray:
    """The hidden law's best grid fraction per cell: what f* estimates."""
    f = np.array(fractions)
    return np.array(
        [
            f[np.argmin(QAT.loss(TRUE_QAT_PARAMS, r.N, (1 - f) * r.D_total, f * r.D_total, r.B))]
            for r in cells.itertuples()
        ]
    )


@pytest.fixture(scope="module")
def seeded():
    return cell_optima(seeded_grid(**GRID, seeds=(0, 1, 2), seed_shift=0.003, noise=0.0005))


@pytest.fixture(scope="module")
def one_seed():
    return cell_optima(seeded_grid(**GRID, seeds=(0,), seed_shift=0.003, noise=0.0005))


def test_seeded_cells_resample_seeds_and_cover_the_hidden_optimum(seeded):
    c = seeded.cells
    assert len(c) == 2 * 4 * 4 and (c.n_seeds == 3).all()
    assert c.method.str.startswith("3 seeds").all()
    # The paired noise the grid was made with (0.05%), not the seed shift (0.3%).
    assert seeded.noise == pytest.approx(0.0005, rel=0.2)
    truth = hidden_optimum(c)
    assert ((c.f_lo <= truth) & (truth <= c.f_hi)).mean() >= 0.9
    assert (c.f_star == truth).mean() >= 0.6
    assert ((c.f_lo <= c.f_star) & (c.f_star <= c.f_hi)).all()


def test_single_seed_cells_use_the_quadratic_residual_noise(one_seed):
    assert one_seed.noise_source.startswith("local quadratic")
    assert one_seed.cells.method.str.startswith("1 seed").all()
    # The quadratic's misfit adds to the noise (an upper bound), but not by much.
    assert 0.0005 < one_seed.noise < 0.002
    truth = hidden_optimum(one_seed.cells)
    c = one_seed.cells
    assert ((c.f_lo <= truth) & (truth <= c.f_hi)).mean() >= 0.9


@pytest.mark.parametrize("fixture", ["seeded", "one_seed"])
def test_the_rising_trend_and_the_predictor_constant_are_recovered(fixture, request):
    optima = request.getfixturevalue(fixture)
    t = optimum_trend(optima, n_boot=300)
    assert t["rho_S"]["lo"] > 0.3  # the hidden law's f* grows with S
    c = optima.cells
    true_a, _ = fit_predictor(c.S_total, hidden_optimum(c))
    assert t["a"]["lo"] <= true_a <= t["a"]["hi"]
    # The hidden law's f* depends on S and only weakly on N (ψ = ν = 0.1).
    assert (
        t["rho_residual_N"]["lo"] < 0 < t["rho_residual_N"]["hi"]
        or abs(t["rho_residual_N"]["value"]) < 0.4
    )


def test_optima_at_the_grid_edge_are_flagged_censored():
    # Large S wants f* ≈ 0.3–0.5: fractions up to 0.2 censor it high, from 0.6 censor it low.
    low_fracs = seeded_grid(
        sizes=(1e8,), bits=(2,), tokens_per_param=(640,), fractions=(0.05, 0.1, 0.2), seeds=(0,)
    )
    high_fracs = seeded_grid(
        sizes=(2e8,), bits=(2,), tokens_per_param=(640,), fractions=(0.6, 0.7, 0.8), seeds=(0,)
    )
    assert cell_optima(low_fracs).cells.censored.tolist() == ["high"]
    assert cell_optima(high_fracs).cells.censored.tolist() == ["low"]
    t = optimum_trend(cell_optima(pd.concat([low_fracs, high_fracs])), n_boot=20)
    assert (t["censored_low"], t["censored_high"]) == (1, 1)


def test_a_subset_keeps_each_cells_replicates(seeded):
    one_bit = subset(seeded, seeded.cells.B.eq(1))
    assert len(one_bit.cells) == 8 and (one_bit.cells.B == 1).all()
    rows = np.flatnonzero(seeded.cells.B.eq(1).to_numpy())
    np.testing.assert_array_equal(one_bit.f_reps, seeded.f_reps[rows])


def test_cells_with_fewer_than_three_fractions_are_left_out():
    runs = seeded_grid(sizes=(1e8,), bits=(2,), tokens_per_param=(40,), fractions=(0.1, 0.3))
    assert cell_optima(runs).cells.empty


def _size_pairs_of(params) -> pd.DataFrame:
    runs = seeded_grid(params, **GRID, seeds=(0, 1, 2), seed_shift=0.003, noise=0.0005)
    return size_pairs(cell_optima(runs))


def test_sizes_at_equal_s_agree_on_f_star_when_the_hidden_law_depends_on_s_alone():
    pairs = _size_pairs_of(TRUE_QAT_PARAMS)  # ψ = ν = 0.1: N barely moves f*
    assert len(pairs) == 4 * 4  # bits × tokens per parameter, one size pair each
    assert (pairs.N_small == 5e7).all() and (pairs.N_large == 2e8).all()
    assert ((pairs.diff_lo <= pairs["diff"]) & (pairs["diff"] <= pairs.diff_hi)).all()
    away_from_zero = (pairs.diff_hi < 0) | (pairs.diff_lo > 0)
    assert away_from_zero.sum() <= 2


def test_sizes_at_equal_s_show_the_larger_model_needing_less_qat_when_the_law_says_so():
    # The pure QAT penalty falls as N^-1.1 instead of N^-0.1 (unchanged at N = 1e8): a larger
    # model at the same S pays less for quantization, so its f* is lower.
    n0, extra = 1e8, 1.0
    params = {
        **TRUE_QAT_PARAMS,
        "psi": TRUE_QAT_PARAMS["psi"] + extra,
        "phi": TRUE_QAT_PARAMS["phi"] * n0**extra,
    }
    pairs = _size_pairs_of(params)
    assert (pairs["diff"] > 0).sum() <= 2
    assert (pairs.diff_hi < 0).sum() >= 4 and (pairs.diff_lo > 0).sum() == 0


def test_three_sizes_pair_each_with_the_next_larger():
    runs = seeded_grid(
        sizes=(5e7, 1e8, 2e8), bits=(4,), tokens_per_param=(40,), fractions=FRACTIONS, seeds=(0,)
    )
    pairs = size_pairs(cell_optima(runs))
    assert list(zip(pairs.N_small, pairs.N_large, strict=True)) == [(5e7, 1e8), (1e8, 2e8)]


def test_s_within_rounding_of_a_step_counts_as_equal():
    runs = seeded_grid(sizes=(5e7, 2e8), bits=(4,), tokens_per_param=(40,), fractions=FRACTIONS)
    big = runs.N == 2e8
    runs.loc[big, ["D_total", "D_fp", "D_qat"]] *= 1.01  # a budget rounded up to whole steps
    optima = cell_optima(runs)
    pairs = size_pairs(optima)
    assert len(pairs) == 1 and pairs.S_total.iloc[0] == pytest.approx(80 * 1.005, rel=1e-3)
    runs.loc[big, ["D_total", "D_fp", "D_qat"]] *= 1.05  # another budget: no pair
    assert size_pairs(cell_optima(runs)).empty
