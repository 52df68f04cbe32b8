"""The number format as a factor of the qat law: a grid drawn from a hidden law with known format
factors is fitted back, a table without formats fits as before, and `analysis.predict --format`
answers for fitted formats only, at their bits per weight."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from analysis import predict
from analysis.anchored_fit import fit_anchored
from analysis.collect import prepare
from analysis.errors import AnalysisError
from analysis.fit import fit
from analysis.fit_law import fit_and_report
from analysis.health import fit_health
from analysis.law import CHINCHILLA, QAT, FittedLaw, load_law
from analysis.pretrained import plan_pretrained
from analysis.synthetic import (
    CHINCHILLA_PARAMS,
    TRUE_FORMAT_FACTORS,
    TRUE_QAT_PARAMS,
    format_grid,
    format_params,
    qat_grid,
)

MXFP4_BITS = 4.25  # 4-bit elements plus an 8-bit scale per 32
# A small grid: 3 sizes, int at 2/4/6 bits plus MXFP4, 4 budgets, 6 fractions (288 runs).
GRID_AXES = {
    "sizes": (5e7, 1e8, 2e8),
    "bits": (2.0, 4.0, 6.0),
    "tokens_per_param": (10.0, 40.0, 150.0, 400.0),
    "fractions": (0.05, 0.1, 0.2, 0.35, 0.5, 0.7),
}
FORMAT_LAW = QAT.with_formats(("int", "mxfp4"))
HIDDEN = FittedLaw(FORMAT_LAW, format_params(TRUE_FORMAT_FACTORS), 1.0, {}, 0, {"at_bounds": []})


@pytest.fixture(scope="module")
def fitted() -> FittedLaw:
    """The qat law fitted to the format grid, its Chinchilla part held at the truth (the format
    factors are what is tested; the anchored fit's first stage is tested on its own)."""
    grid = format_grid(noise=5e-4, seed=3, **GRID_AXES)
    return fit(grid, "qat", starts=40, workers=1, fixed=CHINCHILLA_PARAMS).fitted


def test_the_fit_recovers_each_format_factor(fitted):
    assert fitted.law.formats == ("int", "mxfp4")
    for term, factor in TRUE_FORMAT_FACTORS["mxfp4"].items():
        assert fitted.params[f"{term}.mxfp4"] == pytest.approx(factor, rel=0.05), term
    assert fitted.domain is not None
    assert fitted.domain["formats"] == {"int": [2.0, 4.0, 6.0], "mxfp4": [MXFP4_BITS]}
    assert set(fitted.settings["r2_by_format"]) == {"int", "mxfp4"}
    # The factors move the optimal fraction: MXFP4's differs from INT at the same B, as the
    # hidden law says (a common factor on all quantization terms could not do this).
    for fmt in ("int", "mxfp4"):
        f_true, _ = predict.optimal_fraction(HIDDEN, 1e8, 1e10, MXFP4_BITS, fmt)
        f_fit, _ = predict.optimal_fraction(fitted, 1e8, 1e10, MXFP4_BITS, fmt)
        assert f_fit == pytest.approx(f_true, abs=0.01), fmt
    f_int, _ = predict.optimal_fraction(HIDDEN, 1e8, 1e10, MXFP4_BITS, "int")
    f_mx, _ = predict.optimal_fraction(HIDDEN, 1e8, 1e10, MXFP4_BITS, "mxfp4")
    assert f_int - f_mx > 0.05


def test_a_format_law_round_trips_through_json(fitted, tmp_path):
    back = load_law(fitted.save(tmp_path / "law.json"))
    assert back.law.formats == ("int", "mxfp4") and back.params == fitted.params
    assert json.loads((tmp_path / "law.json").read_text("utf-8"))["formats"] == ["int", "mxfp4"]
    assert back.loss(1e8, 5e9, 5e9, MXFP4_BITS, "mxfp4") == fitted.loss(
        1e8, 5e9, 5e9, MXFP4_BITS, "mxfp4"
    )
    with pytest.raises(AnalysisError, match="speaks for formats int, mxfp4 only"):
        back.loss(1e8, 5e9, 5e9, 4.5, "nvfp4")


def test_the_gradient_of_the_format_factors_matches_finite_differences():
    law = QAT.with_formats(("int", "fp8_e4m3", "mxfp4"))
    params = format_params({"mxfp4": {"theta": 0.5, "phi": 0.7, "lambda": 1.6}})
    params |= {"theta.fp8_e4m3": 1.3, "phi.fp8_e4m3": 0.9, "lambda.fp8_e4m3": 2.0}
    rng = np.random.default_rng(0)
    n = 9
    fmt = rng.choice(["int", "fp8_e4m3", "mxfp4"], n)
    N, D, f = 10 ** rng.uniform(6, 10, n), 10 ** rng.uniform(8, 12, n), rng.uniform(0.05, 0.95, n)
    Z = law.features(N, (1 - f) * D, f * D, rng.choice([2.0, 4.25, 8.0], n), fmt)
    x = law.to_internal(params)
    v = rng.normal(size=n)
    grad = law.log_loss_grad(x, Z)[1](v)
    for i, name in enumerate(law.param_names):
        e = np.zeros_like(x)
        e[i] = 1e-6
        fd = v @ (law.log_loss(x + e, Z) - law.log_loss(x - e, Z)) / 2e-6
        assert grad[i] == pytest.approx(fd, rel=1e-5, abs=1e-6), name


def test_a_table_without_formats_fits_the_law_as_it_was():
    grid = qat_grid(sizes=(5e7, 1e8), tokens_per_param=(10.0, 60.0, 400.0), seed=4)
    plain = fit(grid, "qat", starts=10, workers=1)
    assert plain.fitted.law.formats == ("int",) and "formats" not in plain.fitted.to_dict()
    assert "formats" not in plain.fitted.domain and "format" not in plain.residuals
    # The integer family named in a format column: the same law and parameters.
    named = fit(grid.assign(format="int"), "qat", starts=10, workers=1)
    assert named.fitted.law.param_names == QAT.param_names
    assert named.fitted.params == plain.fitted.params
    assert named.fitted.domain["formats"] == {"int": [1.0, 2.0, 4.0, 6.0]}


def test_a_grid_of_one_float_format_is_its_own_base():
    grid = format_grid(noise=0.0, **GRID_AXES)
    only = fit(grid[grid["format"] == "mxfp4"], "qat", starts=5, workers=1, fixed=CHINCHILLA_PARAMS)
    assert only.fitted.law.formats == ("mxfp4",)
    assert only.fitted.law.param_names == QAT.param_names  # no factor: nothing to compare with


def test_the_anchored_fit_and_its_bootstrap_carry_the_format_factors():
    grid = format_grid(noise=5e-4, seed=5, **GRID_AXES)
    fp = CHINCHILLA.loss(CHINCHILLA_PARAMS, grid.N, grid.D_fp, 0.0, 16.0)
    anchored = fit_anchored(
        grid.assign(fp_loss=fp), starts=20, fp_starts=50, bootstrap=2, workers=1
    )
    assert anchored.law.law.formats == ("int", "mxfp4")
    assert anchored.law.ci is not None and "lambda.mxfp4" in anchored.law.ci
    got = anchored.law.params["phi.mxfp4"]
    assert got == pytest.approx(TRUE_FORMAT_FACTORS["mxfp4"]["phi"], rel=0.1)


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("format", "mxfp", "'mxfp' is unknown; allowed: int, fp4_e2m1"),
        ("B", 4.0, "4 for format mxfp4; B is its bits per weight, 4.25"),
    ],
)
def test_a_format_column_is_checked(column, value, message):
    grid = format_grid(noise=0.0, **GRID_AXES)
    row = grid.index[grid["format"] == "mxfp4"][0]
    grid.loc[row, column] = value
    with pytest.raises(AnalysisError, match=message):
        prepare(grid)


def test_blank_format_cells_are_the_integer_family():
    grid = pd.DataFrame(format_grid(noise=0.0, **GRID_AXES))
    grid.loc[grid["format"] == "int", "format"] = np.nan
    assert set(prepare(grid)["format"]) == {"int", "mxfp4"}


# --- python -m analysis.predict --format ---------------------------------------------------


@pytest.fixture
def law_files(fitted, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fitted.save("law.json")
    FittedLaw(QAT, dict(TRUE_QAT_PARAMS), 1.0, {}, 0, {"at_bounds": []}).save("int.json")


def ask(capsys, *args: str) -> tuple[int, str, str]:
    code = predict.main(["--law", "law.json", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_predict_answers_for_a_fitted_format_at_its_bits_per_weight(fitted, law_files, capsys):
    code, out, err = ask(capsys, "--n", "1e8", "--tokens", "1e10", "--format", "mxfp4", "--json")
    assert code == 0, err
    got = json.loads(out)
    f, loss = predict.optimal_fraction(fitted, 1e8, 1e10, MXFP4_BITS, "mxfp4")
    assert got["format"] == "mxfp4" and got["bits_per_weight"] == MXFP4_BITS
    assert (got["qat_frac"], got["loss"]) == pytest.approx((f, loss))
    code, out, _ = ask(capsys, "--n", "1e8", "--tokens", "1e10", "--format", "mxfp4", "--bits", "4")
    assert code == 0
    assert out.splitlines()[:2] == [
        "format mxfp4: 4.25 bits per weight (block scales counted)",
        f"optimal QAT fraction: {f:.4f}",
    ]
    # The integer family's answer is the law's base-format one, as before.
    code, out, _ = ask(capsys, "--n", "1e8", "--tokens", "1e10", "--bits", "4", "--json")
    f_int, _ = predict.optimal_fraction(fitted, 1e8, 1e10, 4.0, "int")
    assert code == 0 and json.loads(out)["qat_frac"] == pytest.approx(f_int)
    assert "format" not in json.loads(out)


def test_the_memory_budget_counts_the_block_scales(law_files, capsys):
    code, out, err = ask(capsys, "--memory-gb", "0.05", "--flops", "1e19", "--format", "mxfp4")
    assert code == 0, err
    assert out.splitlines()[0] == "format mxfp4: 4.25 bits per weight (block scales counted)"
    args = ("--memory-gb", "0.05", "--flops", "1e19", "--json")
    got = json.loads(ask(capsys, *args, "--format", "mxfp4")[1])
    assert [r["bits"] for r in got["by_bits"]] == [MXFP4_BITS]
    assert got["best"]["N"] == pytest.approx(8 * 0.05e9 / MXFP4_BITS)
    # Without --format: the integer family's fitted widths only, not MXFP4's 4.25.
    got = json.loads(ask(capsys, *args)[1])
    assert [r["bits"] for r in got["by_bits"]] == [2.0, 4.0, 6.0]


def test_a_pretrained_model_is_planned_for_its_format(fitted, law_files, capsys):
    args = ("--n", "1e8", "--pretrained-tokens", "1e10", "--json")
    code, out, err = ask(capsys, *args, "--format", "mxfp4")
    assert code == 0, err
    plan = plan_pretrained(fitted, 1e8, 1e10, MXFP4_BITS, fmt="mxfp4")
    assert json.loads(out)["curve"]["loss"] == pytest.approx(plan.curve.loss.tolist())
    int_at_4 = json.loads(ask(capsys, *args, "--bits", "4")[1])["curve"]["loss"]
    assert int_at_4 == pytest.approx(plan_pretrained(fitted, 1e8, 1e10, 4.0).curve.loss.tolist())


def test_law_md_lists_each_format_with_its_factors(tmp_path):
    grid = format_grid(noise=5e-4, seed=3, **GRID_AXES)
    result = fit_and_report(grid, "file:grid.csv", tmp_path, starts=10, workers=1)
    md = (tmp_path / "law.md").read_text("utf-8")
    p = result.fitted.params
    row = f"| mxfp4 | 4.25 | {result.fitted.settings['r2_by_format']['mxfp4']:.4f} | "
    row += f"{p['theta.mxfp4']:.4g} | {p['phi.mxfp4']:.4g} | {p['lambda.mxfp4']:.4g} |"
    assert "## Number formats" in md and row in md.splitlines()
    assert "| int | 2, 4, 6 |" in md


@pytest.mark.parametrize(
    ("law", "args", "message"),
    [
        ("law.json", ["--format", "nvfp4"], "the law was fitted on formats int, mxfp4 only"),
        ("int.json", ["--format", "mxfp4"], "the law was fitted on formats int only"),
        ("law.json", ["--format", "mxfp4", "--bits", "8"], "stores 4-bit elements; --bits 8"),
        ("law.json", ["--format", "mxfp", "--bits", "4"], "'mxfp' is unknown; allowed: int,"),
        ("law.json", ["--bits", "4.25"], "bits=4.25: the law was fitted on bits 2, 4, 6 only"),
    ],
)
def test_predict_refuses_in_one_line(law_files, capsys, law, args, message):
    code = predict.main(["--law", law, "--n", "1e8", "--tokens", "1e10", *args])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and message in err
    assert err.count("\n") == 1


def test_a_factor_on_its_bound_is_named_in_natural_units():
    params = format_params({"mxfp4": {"theta": 0.01, "phi": 0.7, "lambda": 1.6}})
    law = FittedLaw(FORMAT_LAW, params, 1.0, {}, 0, {"at_bounds": ["theta.mxfp4"]})
    [problem] = fit_health(law)
    assert problem.line.startswith("theta.mxfp4=0.01 sits at its bound 0.01 (allowed 0.01 to 100)")
