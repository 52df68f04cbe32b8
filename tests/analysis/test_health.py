"""A fit reports its health (bounds, irreducible loss, exponent signs); waste has one unit."""

from __future__ import annotations

import math

import numpy as np
import pytest

from analysis import predict
from analysis.health import fit_health, health_lines, health_summary
from analysis.law import QAT, FittedLaw
from analysis.report import waste_lines
from analysis.synthetic import TRUE_QAT_PARAMS

DOMAIN = {
    "N": [1e6, 1e7],
    "D_total": [1e6, 2e7],
    "D_fp": [1e5, 2e7],
    "D_qat": [1e5, 2e7],
    "S_total": [0.2, 160.0],
    "qat_frac": [0.1, 0.7],
    "loss": [3.5, 6.0],
    "bits": [1.0, 2.0, 4.0, 6.0],
    "vocabulary": None,
}
HEALTHY = FittedLaw(QAT, dict(TRUE_QAT_PARAMS), 1.0, {}, 0, {"at_bounds": []}, None, DOMAIN)
# The shape of the mini grid's fit: R² 0.995, yet eta and xi on their bounds, no irreducible
# loss and an interaction term that grows with QAT tokens.
SICK = FittedLaw(
    QAT,
    {**TRUE_QAT_PARAMS, "alpha": 4.1e-5, "eta": 3.0, "xi": 0.0, "rho": -0.85},
    0.995,
    {},
    240,
    {"at_bounds": ["eta", "xi"]},
    None,
    DOMAIN,
)


def test_a_healthy_fit_has_no_warnings():
    assert fit_health(HEALTHY) == [] and health_summary(HEALTHY) is None
    assert health_lines(HEALTHY)[0].startswith("fit health: no parameter at a bound")


def test_bounds_no_irreducible_loss_and_wrong_signs_are_listed():
    problems = fit_health(SICK)
    assert [p.short for p in problems] == [
        "eta at a bound",
        "xi at a bound",
        "alpha ≈ 0",
        "rho < 0",
    ]
    lines = health_lines(SICK)
    assert lines[0].startswith("fit health: 4 warnings")
    assert "eta=3 sits at its bound 3 (allowed 0 to 3)" in lines[1]
    assert "smallest fitted loss 3.5" in lines[3] and "grows with S_qat" in lines[4]
    # psi and nu (a quantization term's size dependence) may take either sign.
    either = FittedLaw(
        QAT, {**TRUE_QAT_PARAMS, "psi": -0.5, "nu": -0.2}, 1.0, {}, 0, {}, None, DOMAIN
    )
    assert fit_health(either) == []


def test_a_law_without_recorded_losses_still_checks_alpha_in_nats():
    old = FittedLaw(QAT, {**TRUE_QAT_PARAMS, "alpha": 1e-4}, 1.0, {}, 0, {})
    assert [p.short for p in fit_health(old)] == ["alpha ≈ 0"]


def test_predict_names_the_fits_problems_in_one_warning(tmp_path, capsys):
    path = SICK.save(tmp_path / "law.json")
    assert predict.main(["--law", str(path), "--n", "5e6", "--tokens", "1e7", "--bits", "4"]) == 0
    [line] = [x for x in capsys.readouterr().err.splitlines() if "health" in x]
    assert "4 health warnings (eta at a bound, xi at a bound, alpha ≈ 0, rho < 0)" in line


def test_waste_is_in_percent_of_d_total_everywhere():
    law = HEALTHY
    table = predict.wasted_tokens_table(law, 4e8, [4e9, 4e10], bits=(1, 6))
    assert "wasted" not in table and "wasted_pct" in table
    expected = [100 * predict.wasted_tokens(law, 4e8, d, b) for b in (1, 6) for d in (4e9, 4e10)]
    np.testing.assert_allclose(table.wasted_pct, expected)


def test_infinite_waste_is_explained_with_the_search_range():
    # A fraction whose loss never comes down to the optimum: the sick law's f = 0.1 at 2e8 tokens.
    w = predict.wasted_tokens(SICK, 1e7, 2e8, 1.0, 0.1)
    assert math.isinf(w)
    note = predict.unreached_note(0.1)
    assert note.startswith("inf: QAT fraction 0.1 never reaches") and "10,000 × the budget" in note


@pytest.mark.parametrize("bits", [1.0])
def test_predict_prints_waste_in_percent(tmp_path, capsys, bits):
    path = HEALTHY.save(tmp_path / "law.json")
    assert predict.main(["--law", str(path), "--n", "5e6", "--tokens", "1e7", "--bits", "1"]) == 0
    out = capsys.readouterr().out
    w = predict.wasted_tokens(HEALTHY, 5e6, 1e7, bits, 0.1)
    assert f"QAT fraction 0.1 instead: {100 * w:.1f}% more tokens to match it" in out


def test_law_md_waste_table_explains_inf_and_marks_extrapolated_budgets():
    table = predict.wasted_tokens_table(SICK, 1e7, [1.6e6, 2e8], bits=(1,))
    lines = waste_lines(table, 1e7, d_hi=2e7)
    assert "| bits | D_total | optimal fraction | wasted (% of D_total) |" in lines
    [row] = [x for x in lines if x.startswith("| 1 | 2e+08 *")]
    assert row.endswith("| inf |")
    assert "- \\* beyond the largest fitted D_total (2e+07): extrapolated." in lines
    assert f"- {predict.unreached_note(0.1)}." in lines
    finite = predict.wasted_tokens_table(HEALTHY, 1e7, [1e7], bits=(1,))
    assert not any(x.startswith(("- inf", "- \\*")) for x in waste_lines(finite, 1e7, 2e7))
