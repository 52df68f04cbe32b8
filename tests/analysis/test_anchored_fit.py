"""The two-stage, FP-anchored fit recovers a hidden law and its bootstrap intervals cover it."""

from __future__ import annotations

import numpy as np
import pytest

from analysis.anchored_fit import fit_anchored, fp_points
from analysis.errors import AnalysisError
from analysis.fit import fit
from analysis.law import CHINCHILLA, QAT
from analysis.predict import optimal_fraction
from analysis.synthetic import CHINCHILLA_PARAMS, TRUE_QAT_PARAMS, chinchilla_grid, seeded_grid
from tests.analysis.helpers import HIDDEN_LAW

GRID = {
    "sizes": (5e7, 1e8, 2e8, 4e8),
    "bits": (1, 2, 4, 6),
    "tokens_per_param": (10, 40, 160, 640),
    "fractions": (0.05, 0.15, 0.3, 0.45, 0.6, 0.8),
}


@pytest.fixture(scope="module")
def anchored():
    runs = seeded_grid(**GRID, seeds=(0, 1), seed_shift=0.003, noise=0.0005)
    return fit_anchored(runs, starts=40, fp_starts=40, workers=2, bootstrap=40, seed=0)


def test_fp_points_take_fp_runs_and_the_classic_runs_fp_phase():
    runs = seeded_grid(**GRID, seeds=(0,))
    pts = fp_points(runs)
    # FP-only runs at (N, D_total) and one FP phase per (N, D_fp): bit widths share it.
    d_fp = {round((1 - f) * r, 6) for f in GRID["fractions"] for r in GRID["tokens_per_param"]}
    expected = len(GRID["sizes"]) * len({float(r) for r in GRID["tokens_per_param"]} | d_fp)
    assert len(pts) == expected
    assert (pts.B == 16).all() and (pts.D_qat == 0).all()
    truth = CHINCHILLA.loss(CHINCHILLA_PARAMS, pts.N, pts.D_fp, 0.0, 16)
    np.testing.assert_allclose(pts.loss, truth, rtol=0.02)


def test_the_hidden_law_is_recovered(anchored):
    law = anchored.law
    assert law.settings["fit"] == "fp-anchored two-stage"
    assert anchored.at_bounds() == {"fp": [], "qat": []}
    for name in ("alpha", "gamma", "eta", "theta", "kappa", "xi", "mu"):
        assert law.params[name] == pytest.approx(TRUE_QAT_PARAMS[name], rel=0.06), name
    assert law.r2 > 0.999 and anchored.fp.fitted.r2 > 0.999
    # What the law is for: the optimal fraction, within 0.03 of the hidden law's.
    for n, s, b in [(1e8, 100, 4), (4e8, 2000, 2), (5e7, 5000, 1)]:
        d = s * n * b / 8
        got = optimal_fraction(law, n, d, b)[0]
        want = optimal_fraction(HIDDEN_LAW, n, d, b)[0]
        assert got == pytest.approx(want, abs=0.03)


def test_chinchilla_part_is_the_fp_stage(anchored):
    fp = anchored.fp.fitted.params
    assert {k: anchored.law.params[k] for k in fp} == fp
    assert anchored.law.settings["fixed"] == sorted(CHINCHILLA.param_names)


def test_bootstrap_intervals_cover_the_truth(anchored):
    ci = anchored.law.ci
    assert ci is not None and set(ci) == set(QAT.param_names)
    covered = [n for n in QAT.param_names if ci[n][0] <= TRUE_QAT_PARAMS[n] <= ci[n][1]]
    assert set(CHINCHILLA.param_names) <= set(covered)
    assert len(covered) >= 12, f"covered only {covered}"
    assert all(lo < hi for lo, hi in ci.values())


def test_a_coefficient_the_data_cannot_reach_is_reported_at_its_bound():
    # η = 4 is beyond the fit's upper bound of 3: the bound, not the data, sets it.
    truth = {**CHINCHILLA_PARAMS, "eta": 4.0, "zeta": 1e30}
    result = fit(chinchilla_grid(truth, noise=0.0005), "chinchilla", starts=30, workers=1)
    assert result.fitted.settings["at_bounds"] == ["eta"]
    assert result.fitted.params["eta"] == pytest.approx(3.0)
    free = fit(chinchilla_grid(noise=0.0005), "chinchilla", starts=30, workers=1)
    assert free.fitted.settings["at_bounds"] == []


def test_fixed_parameters_hold_and_a_lone_coefficient_is_refused():
    runs = chinchilla_grid(noise=0.0005)
    held = fit(runs, "chinchilla", starts=10, workers=1, fixed={"gamma": 0.5})
    assert held.fitted.params["gamma"] == pytest.approx(0.5, abs=1e-12)
    with pytest.raises(AnalysisError, match="needs its exponents"):
        fit(runs, "chinchilla", starts=10, workers=1, fixed={"beta": 400.0})


def test_too_few_fp_points_is_an_error():
    runs = seeded_grid(**GRID, seeds=(0,)).drop(columns="fp_loss")
    runs = runs[runs.B < 16]
    with pytest.raises(AnalysisError, match="FP points"):
        fit_anchored(runs, starts=5, fp_starts=5, workers=1)
