"""`analysis.predict` knows its limits: the law's domain, bit widths it cannot speak for, the
loss's unit, one size parser, the memory-budget question, and the README's commands."""

from __future__ import annotations

import json
import re
import shlex

import pytest

from analysis import predict
from analysis.collect import from_mlflow, prepare
from analysis.domain import domain_of, loss_unit
from analysis.fit import select_rows
from analysis.law import CHINCHILLA, QAT, FittedLaw, load_law
from analysis.synthetic import CHINCHILLA_PARAMS, TRUE_QAT_PARAMS, qat_grid
from tests.analysis.helpers import REPO

# The synthetic grid's classic rows: N 5e7..2e8, bits 1/2/4/6, its budgets and fractions.
GRID = prepare(qat_grid(sizes=(5e7, 1e8, 2e8), seed=8))
USED, _ = select_rows(QAT, GRID)
DOMAIN = domain_of(USED)
LAW = FittedLaw(QAT, dict(TRUE_QAT_PARAMS), 1.0, {}, len(USED), {"at_bounds": []}, None, DOMAIN)
FP_USED, _ = select_rows(CHINCHILLA, GRID)
FP_LAW = FittedLaw(
    CHINCHILLA, dict(CHINCHILLA_PARAMS), 1.0, {}, 3, {"at_bounds": []}, None, domain_of(FP_USED)
)


@pytest.fixture
def laws(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    LAW.save("law.json")
    FP_LAW.save("fp.json")
    FittedLaw(QAT, dict(TRUE_QAT_PARAMS), 1.0, {}, 0, {}).save("old.json")


def ask(capsys, *args: str) -> tuple[int, str, str]:
    code = predict.main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_the_fitted_domain_round_trips_and_old_laws_still_load(tmp_path):
    assert DOMAIN["N"] == [5e7, 2e8] and DOMAIN["bits"] == [1.0, 2.0, 4.0, 6.0]
    assert DOMAIN["D_total"] == [USED.D_total.min(), USED.D_total.max()]
    assert DOMAIN["qat_frac"][1] == pytest.approx(USED.qat_frac.max())
    back = load_law(LAW.save(tmp_path / "law.json"))
    assert back.domain == json.loads(json.dumps(DOMAIN))
    raw = json.loads((tmp_path / "law.json").read_text("utf-8"))
    del raw["domain"]
    (tmp_path / "old.json").write_text(json.dumps(raw), "utf-8")
    assert load_law(tmp_path / "old.json").domain is None


def test_an_old_law_answers_and_says_its_domain_is_unknown(laws, capsys):
    code, out, err = ask(
        capsys, "--law", "old.json", "--n", "1e8", "--tokens", "2e9", "--bits", "4"
    )
    assert code == 0 and "optimal QAT fraction" in out
    [line] = [x for x in err.splitlines() if "domain" in x]
    assert line.startswith("warning: the law records no domain") and "unknown" in line


def test_a_question_inside_the_domain_gets_no_warning(laws, capsys):
    code, out, err = ask(
        capsys, "--law", "law.json", "--n", "1e8", "--tokens", "2e10", "--bits", "4"
    )
    assert code == 0 and err == ""
    assert "extrapolated" not in out


def test_a_question_outside_gets_the_answer_and_how_far_outside(laws, capsys):
    code, out, err = ask(
        capsys, "--law", "law.json", "--n", "2e10", "--tokens", "1e13", "--bits", "4"
    )
    assert code == 0
    f, loss = predict.optimal_fraction(LAW, 2e10, 1e13, 4.0)
    assert f"optimal QAT fraction: {f:.4f}" in out and f"{loss:.4f}" in out
    lines = err.splitlines()
    assert (
        "warning: N=2e+10 is 100x above the largest fitted N (non-embedding parameters) 2e+08"
        in lines
    )
    assert any(
        x.startswith("warning: D_total=1e+13 is ") and "above the largest" in x for x in lines
    )
    # The law's own optimum at the nearest question inside its domain, beside the extrapolation.
    n_in, d_in = 2e8, DOMAIN["D_total"][1]
    f_in, _ = predict.optimal_fraction(LAW, n_in, d_in, 4.0)
    assert f"the law's optimal fraction is {f_in:.4f}" in out and "nearest question inside" in out


@pytest.mark.parametrize("bits", ["5", "8", "16"])
def test_bit_widths_without_runs_are_refused_in_one_line(laws, capsys, bits):
    code, out, err = ask(
        capsys, "--law", "law.json", "--n", "1e8", "--tokens", "2e10", "--bits", bits
    )
    assert code == 2 and out == ""
    assert err.startswith(f"error: bits={bits}") and err.count("\n") == 1
    assert "(bits 1, 2, 4, 6)" in err or "fitted on bits 1, 2, 4, 6 only" in err
    assert "pass --interpolate-bits to answer anyway" in err
    if bits == "16":
        assert "no full-precision runs" in err
    code, out, err = ask(
        capsys, "--law", "law.json", "--n", "1e8", "--tokens", "2e10", "--bits", bits,
        "--interpolate-bits",
    )  # fmt: skip
    assert code == 0 and "predicted loss" in out
    assert f"warning: bits={bits}" in err and "answered by the formula anyway" in err


def test_full_precision_is_answered_by_a_law_fitted_on_fp_runs(laws, capsys):
    code, out, err = ask(
        capsys, "--law", "fp.json", "--n", "1e8", "--tokens", "2e10", "--bits", "16"
    )
    assert code == 0 and err == ""
    loss = float(predict.loss_at(FP_LAW, 1e8, 2e10, 16.0, 0.0))
    assert out.splitlines()[:2] == [
        "full precision: no QAT phase",
        f"predicted loss:       {loss:.4f} nats/token (vocabulary unknown)",
    ]
    # Any width from 16 up is full precision; below it the FP law has nothing to say.
    assert (
        ask(capsys, "--law", "fp.json", "--n", "1e8", "--tokens", "2e10", "--bits", "32")[1] == out
    )
    code, _, err = ask(capsys, "--law", "fp.json", "--n", "1e8", "--tokens", "2e10", "--bits", "4")
    assert code == 2 and "fitted on bits 16 only" in err


def test_losses_name_their_unit_and_the_vocabulary(laws, capsys):
    assert loss_unit(None) == "nats/token (vocabulary unknown)"
    named = domain_of(USED.assign(data="bundled-large", vocab_size="4096"))
    assert loss_unit(named) == "nats/token (bundled-large, vocabulary 4096)"
    _, out, _ = ask(capsys, "--law", "law.json", "--n", "1e8", "--tokens", "2e10", "--bits", "4")
    assert re.search(r"^predicted loss: +\d\.\d{4} nats/token \(vocabulary unknown\)$", out, re.M)


def test_the_vocabulary_comes_from_the_runs_in_mlflow(mlflow_store):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_store)
    exp = client.create_experiment("named")
    run = client.create_run(exp)
    params = {"bits": "4.0", "n_params": "1000000", "tokens_fp": "700000", "tokens_qat": "300000"}
    params |= {"data.source": "bundled-large", "data.vocab_size": "4096"}
    for k, v in params.items():
        client.log_param(run.info.run_id, k, v)
    client.log_metric(run.info.run_id, "final/val_loss", 4.0)
    client.set_terminated(run.info.run_id)
    runs = from_mlflow("named", mlflow_store)
    assert domain_of(runs)["vocabulary"] == "bundled-large, vocabulary 4096"


def test_sizes_take_the_trainers_suffixes(laws, capsys):
    plain = ask(capsys, "--law", "law.json", "--n", "1e8", "--tokens", "2e10", "--bits", "4")
    suffixed = ask(capsys, "--law", "law.json", "--n", "100M", "--tokens", "20B", "--bits", "4")
    assert plain == suffixed and plain[0] == 0
    code, out, err = ask(
        capsys, "--law", "law.json", "--n", "1e8", "--tokens", "20x", "--bits", "4"
    )
    assert code == 2 and out == "" and err.count("\n") == 1
    assert err.startswith("error: --tokens='20x' is not a count; use e.g. 2000000, 2e6, 2M, 2.5k")


def test_memory_budget_answers_the_best_model_at_given_compute(laws, capsys):
    code, out, err = ask(
        capsys, "--law", "law.json", "--memory-gb", "0.05", "--flops", "1e20", "--json"
    )
    assert code == 0
    got = json.loads(out)
    table = predict.optimal_bits(LAW, 0.05e9, 1e20, [1.0, 2.0, 4.0, 6.0])
    best = table[table.best].iloc[0]
    assert got["best"]["bits"] == best.bits and got["best"]["N"] == pytest.approx(best.N)
    assert got["best"]["loss"] == pytest.approx(best.loss)
    assert [r["bits"] for r in got["by_bits"]] == [1.0, 2.0, 4.0, 6.0]  # fitted widths only
    # Compute as 6·N·D from --n and --tokens gives the same answer.
    tokens = f"{1e20 / 6e9 / 1e9:.12g}B"
    code, out2, _ = ask(
        capsys,
        "--law",
        "law.json",
        "--memory-gb",
        "0.05",
        "--n",
        "1e9",
        "--tokens",
        tokens,
        "--json",
    )
    assert code == 0 and json.loads(out2)["best"]["bits"] == got["best"]["bits"]
    code, _, err = ask(capsys, "--law", "law.json", "--memory-gb", "0.05")
    assert code == 2 and "needs a compute budget" in err


def test_the_readme_tour_predict_commands_run_as_printed(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    readme = (REPO / "README.md").read_text("utf-8")
    commands = re.findall(r"`(python -m analysis\.predict [^`]+)`", readme)
    assert len(commands) >= 3
    for command in commands:
        code = predict.main(shlex.split(command)[3:])
        out = capsys.readouterr()
        assert code == 0, (command, out.err)
        assert "nats/token" in out.out or "D_qat" in out.out
    fit_rows = re.findall(r"`(python -m analysis\.fit_law [^`]+)`", readme)
    for command in fit_rows:
        csv = shlex.split(command)[shlex.split(command).index("--csv") + 1]
        assert (REPO / csv).is_file(), command
