"""Predictions of a law: optimal fraction, the paper's predictor, wasted tokens, bits, CLI."""

from __future__ import annotations

import json
from decimal import ROUND_HALF_UP, Decimal

import numpy as np
import pandas as pd
import pytest

from analysis import predict
from analysis.collect import prepare
from analysis.errors import AnalysisError
from analysis.law import CHINCHILLA, QAT, FittedLaw
from analysis.synthetic import CHINCHILLA_PARAMS, TRUE_QAT_PARAMS
from tests.analysis.helpers import run_module

TRUE = FittedLaw(QAT, dict(TRUE_QAT_PARAMS), 1.0, {}, 0, {})


@pytest.mark.parametrize(("s", "f"), [(100, 0.232), (1e3, 0.378), (1e4, 0.482)])
def test_predicted_fraction_gives_the_papers_values(s, f):
    # The paper prints three decimals rounded via four: at S = 1e3, a = 6.7297 gives 0.37749,
    # printed as 0.378 (0.37749 → 0.3775 → 0.378).
    four = Decimal(repr(predict.predicted_fraction(s))).quantize(Decimal("1e-4"), ROUND_HALF_UP)
    assert float(four.quantize(Decimal("1e-3"), ROUND_HALF_UP)) == f


def test_predicted_fraction_is_vectorised_and_needs_s_above_one():
    out = predict.predicted_fraction(np.array([100.0, 1e4]), a=5.0)
    np.testing.assert_allclose(out, np.exp(-5.0 / np.log([100.0, 1e4])))
    with pytest.raises(AnalysisError, match="must be > 1"):
        predict.predicted_fraction(1.0)


def test_fit_predictor_recovers_a():
    S = np.geomspace(20, 3e4, 30)
    a, mae = predict.fit_predictor(S, predict.predicted_fraction(S, 5.5))
    assert a == pytest.approx(5.5, abs=1e-5) and mae < 1e-6
    noisy = predict.predicted_fraction(S, 5.5) + np.random.default_rng(0).normal(0, 0.02, 30)
    a, mae = predict.fit_predictor(S, noisy)
    assert a == pytest.approx(5.5, abs=0.3) and 0.005 < mae < 0.04


def test_optimal_fraction_is_the_minimum_of_the_loss_curve():
    f_grid = np.linspace(1e-3, 1 - 1e-3, 20001)
    for n, d, b in [(1e8, 1e9, 1.0), (4e8, 4e10, 4.0), (1e9, 1e12, 6.0)]:
        f, loss = predict.optimal_fraction(TRUE, n, d, b)
        brute = predict.loss_at(TRUE, n, d, b, f_grid)
        assert 0 < f < 1
        assert f == pytest.approx(f_grid[np.argmin(brute)], abs=2e-4)
        assert loss <= brute.min() + 1e-12
        assert loss == pytest.approx(float(predict.loss_at(TRUE, n, d, b, f)))


def test_synthetic_law_optimum_is_interior_and_grows_with_s():
    # The shape the synthetic coefficients were chosen for, as in the paper.
    for b in (1.0, 2.0, 4.0, 6.0):
        fs = [predict.optimal_fraction(TRUE, 1e8, r * 1e8, b)[0] for r in (10, 40, 160, 640)]
        assert all(0.05 < f < 0.7 for f in fs)
        assert np.all(np.diff(fs) > 0)


def test_full_precision_loss_is_the_chinchilla_part():
    n, d = np.array([1e8, 1e9]), np.array([2e9, 2e10])
    fp = predict.loss_at(TRUE, n, d, 16.0, 0.0)
    np.testing.assert_allclose(fp, CHINCHILLA.loss(CHINCHILLA_PARAMS, n, d, 0.0, 16.0))
    qat = predict.loss_at(TRUE, n, d, 4.0, 0.3)
    assert np.all(qat > fp)  # QAT adds positive terms


def test_fraction_table_lists_paper_and_law():
    table = predict.fraction_table(TRUE, 1e9, [1e2, 1e4], bits=(1, 4))
    assert list(table.columns) == ["S_total", "paper f̂(S)", "law f*, 1-bit", "law f*, 4-bit"]
    np.testing.assert_allclose(table["paper f̂(S)"], [0.2319, 0.4816], atol=1e-4)
    assert (table["law f*, 1-bit"].diff().dropna() > 0).all()


def test_wasted_tokens_solve_for_equal_loss():
    n, d, b = 2e8, 2e10, 1.0
    w = predict.wasted_tokens(TRUE, n, d, b, frac=0.1)
    assert w > 0.01
    _, best = predict.optimal_fraction(TRUE, n, d, b)
    assert float(predict.loss_at(TRUE, n, d * (1 + w), b, 0.1)) == pytest.approx(best, rel=1e-9)
    f_opt, _ = predict.optimal_fraction(TRUE, n, d, b)
    assert predict.wasted_tokens(TRUE, n, d, b, frac=f_opt) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(AnalysisError, match=r"frac=1\.0; must be in \(0, 1\)"):
        predict.wasted_tokens(TRUE, n, d, b, frac=1.0)


def test_wasted_tokens_table_is_larger_at_low_bits():
    table = predict.wasted_tokens_table(TRUE, 4e8, [4e9, 4e10, 1.6e11], bits=(1, 6))
    assert len(table) == 6 and (table.wasted_pct >= 0).all()
    one, six = (table.wasted_pct[table.B.eq(b)].to_numpy() for b in (1, 6))
    assert np.all(one > six)


def test_optimal_bits_under_a_memory_budget():
    table = predict.optimal_bits(TRUE, [1e8, 1e9], [1e18, 1e20, 1e22])
    assert len(table) == 2 * 3 * 6
    np.testing.assert_allclose(table.N, 8 * table.memory / table.bits)
    np.testing.assert_allclose(6 * table.N * table.D_total, table.compute)
    assert (table.groupby(["memory", "compute"]).best.sum() == 1).all()
    for _, g in table.groupby(["memory", "compute"]):
        assert g[g.best].loss.iloc[0] == g.loss.min()
    best = table[table.best & (table.memory == 1e8)].sort_values("compute").bits.to_numpy()
    assert np.all(np.diff(best) <= 0) and best[0] > best[-1]  # the paper's trend
    with pytest.raises(AnalysisError, match=r"compute=-1\.0; must be a finite number > 0"):
        predict.optimal_bits(TRUE, 1e8, -1.0)


def test_fp_crossover_compute_is_where_the_losses_meet():
    memory = 1e8
    c = predict.fp_crossover_compute(TRUE, memory, 4.0)
    assert 1e15 < c < 1e27
    table = predict.optimal_bits(TRUE, memory, c, bits=(4.0, 16.0)).set_index("bits")
    assert table.loss[4.0] == pytest.approx(table.loss[16.0], rel=1e-7)
    later = predict.optimal_bits(TRUE, memory, 10 * c, bits=(4.0, 16.0)).set_index("bits")
    assert later.loss[4.0] < later.loss[16.0]
    # Lower bit widths need more compute before their extra parameters pay for the QAT penalty.
    assert predict.fp_crossover_compute(TRUE, memory, 1.0) > c
    with pytest.raises(AnalysisError, match="bits=16"):
        predict.fp_crossover_compute(TRUE, memory, 16.0)


def test_empirical_optima_pick_the_lowest_loss_fraction():
    runs = prepare(
        pd.DataFrame(
            {
                "N": [1e8] * 4 + [2e8] * 2,
                "D_fp": [9e9, 7e9, 5e9, 1e10, 9e9, 7e9],
                "D_qat": [1e9, 3e9, 5e9, 0.0, 1e9, 3e9],
                "B": [4, 4, 4, 16, 4, 4],
                "loss": [3.1, 3.0, 3.2, 2.9, 2.8, 2.7],
            }
        )
    )
    opt = predict.empirical_optima(runs)
    assert len(opt) == 1  # the 2e8 cell has only two fractions
    row = opt.iloc[0]
    assert (row.N, row.B, row.qat_frac, row.loss, row.n_fracs) == (1e8, 4, 0.3, 3.0, 3)
    assert row.S_total == pytest.approx(1e10 / (1e8 * 4 / 8))


def test_chinchilla_law_has_no_fraction():
    fp_law = FittedLaw(CHINCHILLA, dict(CHINCHILLA_PARAMS), 1.0, {}, 0, {})
    with pytest.raises(AnalysisError, match="has no QAT terms"):
        predict.optimal_fraction(fp_law, 1e8, 1e9, 4.0)
    with pytest.raises(AnalysisError, match=r"bits=16\.0; the QAT fraction needs bits < 16"):
        predict.optimal_fraction(TRUE, 1e8, 1e9, 16.0)


def test_predict_cli(tmp_path):
    path = TRUE.save(tmp_path / "law.json")
    args = ["--law", str(path), "--n", "1.2e9", "--tokens", "1e11", "--bits", "4"]
    out = run_module("analysis.predict", *args, "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    f, loss = predict.optimal_fraction(TRUE, 1.2e9, 1e11, 4.0)
    assert {k: got[k] for k in ("qat_frac", "loss")} == pytest.approx({"qat_frac": f, "loss": loss})
    assert got["loss_unit"] == "nats/token (vocabulary unknown)"
    text = run_module("analysis.predict", *args, cwd=tmp_path)
    assert f"{f:.4f}" in text.stdout and f"{loss:.4f}" in text.stdout

    # A qat law has no FP runs in its fit: full precision only on request.
    fp = run_module("analysis.predict", *args[:-1], "16", "--json", cwd=tmp_path)
    assert fp.returncode == 2 and "fitted on QAT runs only" in fp.stderr
    fp = run_module(
        "analysis.predict", *args[:-1], "16", "--interpolate-bits", "--json", cwd=tmp_path
    )
    assert json.loads(fp.stdout)["qat_frac"] == 0.0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--law", "missing.json", "--n", "1e9", "--tokens", "1e11", "--bits", "4"], "does not"),
        (["--law", "law.json", "--n", "-1", "--tokens", "1e11", "--bits", "4"], "--n='-1' is not"),
        (["--law", "fp.json", "--n", "1e9", "--tokens", "1e11", "--bits", "4"], "no QAT terms"),
    ],
)
def test_predict_cli_errors_exit_2_with_one_line(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    TRUE.save("law.json")
    FittedLaw(CHINCHILLA, dict(CHINCHILLA_PARAMS), 1.0, {}, 0, {}).save("fp.json")
    assert predict.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert err.count("\n") == 1
