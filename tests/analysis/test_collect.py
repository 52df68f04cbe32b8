"""Runs → table: validation of files, and a real SQLite MLflow store in the trainer's schema."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from analysis.collect import NoRunsError, from_mlflow, load_runs, prepare, read_table
from analysis.errors import AnalysisError
from tests.analysis.helpers import GRID_EXPERIMENT, log_runs, small_grid


def table(**overrides) -> pd.DataFrame:
    base = {"N": [1e8, 2e8], "D_fp": [9e9, 0.0], "D_qat": [1e9, 0.0], "B": [4, 16], "loss": [3, 2]}
    base["D_fp"][1] = 1e10
    return pd.DataFrame({**base, **overrides})


def test_prepare_adds_totals_and_tokens_per_parameter_byte():
    out = prepare(table())
    np.testing.assert_allclose(out.D_total, [1e10, 1e10])
    np.testing.assert_allclose(out.S_total, [1e10 / (1e8 * 4 / 8), 1e10 / (2e8 * 16 / 8)])
    np.testing.assert_allclose(out.S_qat, [1e9 / 5e7, 0.0])
    np.testing.assert_allclose(out.S_fp, [9e9 / 5e7, 1e10 / 4e8])
    assert out.fusion.tolist() == [False, False]


@pytest.mark.parametrize(
    ("df", "message"),
    [
        (table().drop(columns=["B", "loss"]), "runs table lacks columns ['B', 'loss']"),
        (table(N=["1e8", "lots"]), "column 'N', row 1: 'lots' is not a finite number"),
        (table(loss=[3.0, np.nan]), "column 'loss', row 1: nan is not a finite number"),
        (table(B=[4, 0]), "column 'B', row 1: 0.0 must be > 0"),
        (table(D_qat=[-1.0, 0.0]), "column 'D_qat', row 0: -1.0 must be >= 0"),
        (table(D_total=[1e10, 5e9]), "column 'D_total', row 1: 5000000000.0 != D_fp + D_qat"),
        (table(fusion=["True", "maybe"]), "row 1: fusion='maybe' is not a boolean"),
        (table().iloc[:0], "runs table has no rows"),
    ],
)
def test_bad_tables_fail_with_one_clear_line(df, message):
    with pytest.raises(AnalysisError) as err:
        prepare(df)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_fusion_values_are_parsed():
    out = prepare(table(fusion=["True", "0"]))
    assert out.fusion.tolist() == [True, False]


def test_read_csv_and_parquet(tmp_path):
    df = table()
    df.to_csv(tmp_path / "runs.csv", index=False)
    df.to_parquet(tmp_path / "runs.parquet")
    for name in ("runs.csv", "runs.parquet"):
        got = read_table(tmp_path / name)
        np.testing.assert_allclose(got.S_total, prepare(df).S_total)
    (tmp_path / "runs.txt").write_text("x")
    with pytest.raises(AnalysisError, match=r"suffix '\.txt'; allowed: \.csv, \.parquet"):
        read_table(tmp_path / "runs.txt")
    with pytest.raises(AnalysisError, match="does not exist"):
        read_table(tmp_path / "missing.csv")


def test_mlflow_runs_become_the_table(mlflow_store):
    runs = from_mlflow(GRID_EXPERIMENT)  # tracking URI from $MLFLOW_TRACKING_URI
    expected = small_grid().assign(D_fp=lambda d: d.D_fp.round(), D_qat=lambda d: d.D_qat.round())
    assert len(runs) == len(expected)  # the RUNNING and FAILED runs do not count
    assert {
        "N",
        "D_fp",
        "D_qat",
        "D_total",
        "B",
        "fusion",
        "loss",
        "S_total",
        "S_fp",
        "S_qat",
    } <= set(runs.columns)
    key = ["N", "B", "D_fp", "D_qat"]
    merged = runs.merge(expected, on=key, suffixes=("", "_expected"))
    assert len(merged) == len(expected)
    np.testing.assert_allclose(merged.loss, merged.loss_expected)
    assert set(runs.B) == {1.0, 4.0, 16.0}
    assert runs.run_key.str.len().eq(12).all()
    assert runs.model.str.startswith("synthetic-").all()
    np.testing.assert_allclose(runs.fp_loss, runs.loss * 0.98)


def test_explicit_tracking_uri_wins_over_the_environment(mlflow_store, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///elsewhere.db")
    assert len(from_mlflow(GRID_EXPERIMENT, tracking_uri=mlflow_store)) == len(small_grid())


def test_ternary_bits_and_schema_errors(mlflow_store):
    client = MlflowClient(mlflow_store)
    exp = client.create_experiment("ternary")
    one = small_grid().iloc[[0]].assign(B=1.58)
    log_runs(client, exp, one)
    assert from_mlflow("ternary").B.tolist() == [1.58]

    bad = client.create_run(exp)
    schema = {"bits": "four", "n_params": "1e6", "tokens_fp": "9", "tokens_qat": "1"}
    for k, v in schema.items():
        client.log_param(bad.info.run_id, k, v)
    client.log_metric(bad.info.run_id, "final/val_loss", 3.0)
    client.set_terminated(bad.info.run_id, "FINISHED")
    with pytest.raises(AnalysisError, match=f"run {bad.info.run_id}: param bits='four' is not a"):
        from_mlflow("ternary")

    exp2 = client.create_experiment("no-loss")
    run = client.create_run(exp2)
    for k, v in {**schema, "bits": "4.0"}.items():
        client.log_param(run.info.run_id, k, v)
    client.set_terminated(run.info.run_id, "FINISHED")
    with pytest.raises(AnalysisError, match="lacks metric 'final/val_loss'"):
        from_mlflow("no-loss")


def test_missing_or_empty_experiments(mlflow_store, tmp_path):
    with pytest.raises(
        NoRunsError, match=r"experiment 'nope' not found at sqlite.*found \[.*'grid'"
    ):
        from_mlflow("nope")
    MlflowClient(mlflow_store).create_experiment("empty")
    with pytest.raises(NoRunsError, match="has no FINISHED runs"):
        from_mlflow("empty")
    # load_runs falls back to the file for a missing or empty experiment, and says so.
    small_grid().to_csv(tmp_path / "grid.csv", index=False)
    runs, source = load_runs("empty", tmp_path / "grid.csv")
    assert source == f"file:{tmp_path / 'grid.csv'}" and len(runs) == len(small_grid())
    runs, source = load_runs(GRID_EXPERIMENT, tmp_path / "grid.csv")
    assert source == f"mlflow:{GRID_EXPERIMENT}"
    with pytest.raises(NoRunsError):
        load_runs("nope")
    with pytest.raises(AnalysisError, match="no runs source"):
        load_runs()


def test_export_cli_round_trips_an_mlflow_experiment(mlflow_store, tmp_path):
    from analysis.collect import main

    client = MlflowClient(mlflow_store)
    exp = client.create_experiment("mini")
    classic = small_grid()
    fused = classic[(classic.B < 16)].iloc[:4].assign(fusion=True, loss=lambda d: d.loss - 0.01)
    fp_marked_fused = classic[classic.B >= 16].iloc[:1].assign(fusion=True)  # config said fused
    log_runs(client, exp, pd.concat([classic, fused, fp_marked_fused], ignore_index=True))
    out = tmp_path / "runs.csv"
    code = main(["--experiment", "mini", "--tracking-uri", mlflow_store, "--out", str(out)])
    assert code == 0
    direct = from_mlflow("mini", mlflow_store)
    back = read_table(out)
    assert list(back.columns) == list(direct.columns)
    pd.testing.assert_frame_equal(back, direct, check_dtype=False)
    assert back.fusion.sum() == 4  # the FP-only run is never fused
    q = back[back.B < 16]
    np.testing.assert_allclose(q.qat_frac, q.D_qat / q.D_total, rtol=1e-6)
    assert (back.qat_frac[back.B >= 16] == 0).all()
    assert main(["--experiment", "nope", "--out", str(out)]) == 2


def _log_cell(client, exp, tokens, params, train_loss=()):
    """A FINISHED run with the data params a cell logs (strings) and its train/loss points."""
    from mlflow.entities import Metric, Param

    run = client.create_run(exp, tags={"run_key": f"k{len(params)}-{tokens}"})
    base = {"bits": "4.0", "qat_frac": "0.5", "n_params": "1000", "seed": "0"}
    base |= {"tokens_fp": str(tokens // 2), "tokens_qat": str(tokens // 2), "fusion": "False"}
    metrics = [Metric("final/val_loss", 3.5, 0, tokens)]
    metrics += [Metric("train/loss", value, 0, step) for step, value in train_loss]
    client.log_batch(
        run.info.run_id, metrics=metrics, params=[Param(k, v) for k, v in (base | params).items()]
    )
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def test_repetition_columns_from_mlflow(mlflow_store):
    """train_fraction, the last train/loss point, and epochs over the split's tokens: a run's
    own, or for a run logged before that param, another run's of the same data fingerprint."""
    client = MlflowClient(mlflow_store)
    exp = client.create_experiment("repetition")
    curve = [(1000, 5.0), (3000, 3.2), (4000, 3.0), (2000, 4.0)]  # logged out of order
    half = _log_cell(
        client,
        exp,
        4000,
        {"data.train_fraction": "0.5", "data_train_tokens": "1000", "data_fingerprint": "aa"},
        curve,
    )
    old = _log_cell(client, exp, 2000, {"data_fingerprint": "aa"}, [(2000, 3.7)])
    other = _log_cell(client, exp, 2000, {"data_fingerprint": "bb"})
    runs = from_mlflow("repetition", mlflow_store).set_index("run_id")
    assert runs.train_fraction.to_dict() == {half: 0.5, old: 1.0, other: 1.0}
    assert runs.train_loss[half] == 3.0 and runs.train_loss[old] == 3.7
    assert np.isnan(runs.train_loss[other])  # no train/loss points
    assert runs.epochs[half] == 4000 / (1000 * 0.5)
    assert runs.epochs[old] == 2000 / 1000  # the split's size from the same fingerprint
    assert np.isnan(runs.epochs[other])  # no run of that data recorded it
    assert "data_fingerprint" not in runs.columns


def test_tables_collected_before_the_repetition_columns_still_load(tmp_path):
    import pandas as pd

    from tests.analysis.helpers import REPO

    runs = read_table(REPO / "results" / "mini" / "runs.csv")
    assert len(runs) > 100 and "train_loss" not in runs.columns
    # results/repro's table as it was before the columns existed
    repro = pd.read_csv(REPO / "results" / "repro" / "runs.csv")
    old = repro.drop(columns=["train_fraction", "train_loss", "data_train_tokens", "epochs"])
    old.to_csv(tmp_path / "runs.csv", index=False)
    runs = read_table(tmp_path / "runs.csv")
    assert len(runs) == len(repro) and "train_loss" not in runs.columns


def test_the_qat_phase_knobs_from_mlflow(mlflow_store):
    """The QAT peak's ratio and the moments' reset, as the trainer logs them (its flattened
    config, as text); a run logged before the knobs existed gets the defaults it ran with."""
    client = MlflowClient(mlflow_store)
    exp = client.create_experiment("qat-phase")
    knobs = {"schedule.qat_lr_ratio": "0.3", "optim.qat_reset_moments": "True"}
    both = _log_cell(client, exp, 4000, knobs)
    old = _log_cell(client, exp, 2000, {})
    runs = from_mlflow("qat-phase", mlflow_store).set_index("run_id")
    assert runs.qat_lr_ratio.to_dict() == {both: 0.3, old: 1.0}
    assert runs.qat_reset_moments.to_dict() == {both: True, old: False}
    _log_cell(client, exp, 1000, {"optim.qat_reset_moments": "maybe"})
    with pytest.raises(AnalysisError, match=r"optim\.qat_reset_moments='maybe' is not a boolean"):
        from_mlflow("qat-phase", mlflow_store)
