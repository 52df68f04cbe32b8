"""qat.report on a real SQLite store: one table per corpus and vocabulary, the runs that did not
finish counted under each, and the grid plots logged to an analysis run."""

from __future__ import annotations

import pandas as pd
import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from qat.report import main
from qat.tracking import Tracker
from qat.tracking_schema import CLASSIC_ML_KIND, EXPERIMENT_KIND_TAG


def _cell(tracker: Tracker, key: str, vocab: int, bits: float, frac: float, status: str, loss):
    run_id = tracker.open_run(key, key)
    params = {
        "data.source": "bundled",
        "data.vocab_size": vocab,
        "model.name": "nano",
        "bits": bits,
        "qat_frac": frac,
        "fusion": False,
        "tokens_total": 600000,
        "seed": 0,
    }
    metrics = [] if loss is None else [Metric("final/val_loss", loss, 0, 600000)]
    tracker.client.log_batch(
        run_id, metrics=metrics, params=[Param(k, str(v)) for k, v in params.items()]
    )
    if status != "RUNNING":
        tracker.end(run_id, status)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    uri = f"sqlite:///{tmp_path_factory.mktemp('store')}/mlflow.db"
    tracker = Tracker(uri, "qat")
    _cell(tracker, "a", 2048, 4, 0.25, "FINISHED", 3.10)
    _cell(tracker, "b", 2048, 16, 0.25, "FINISHED", 3.00)
    _cell(tracker, "c", 2048, 2, 0.5, "FAILED", None)
    _cell(tracker, "d", 2048, 2, 0.25, "KILLED", None)
    _cell(tracker, "e", 8192, 4, 0.25, "FINISHED", 4.50)
    _cell(tracker, "f", 8192, 4, 0.5, "RUNNING", None)
    return uri


def test_one_table_per_vocabulary_and_the_unfinished_counted(store, capsys):
    assert main(["--tracking-uri", store]) == 0
    out = capsys.readouterr().out
    assert out.startswith("3 finished run(s) in experiment 'qat'")
    small, large = out.split("\ndata bundled, vocab 2048: 2 finished\n")[1].split(
        "\ndata bundled, vocab 8192: 1 finished\n"
    )
    assert "3.1000" in small and "3.0000" in small and "4.5000" not in small
    assert "4.5000" in large and "3.1000" not in large
    assert small.strip().endswith("not in the table: 1 failed, 1 killed, 0 running")
    assert large.strip().endswith("not in the table: 0 failed, 0 killed, 1 running")


def test_grid_plots_are_written_and_logged_to_an_analysis_run(store, tmp_path, capsys):
    assert main(["--tracking-uri", store, "--plots", str(tmp_path), "--log-plots"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundled-v2048.png", "bundled-v8192.png"]
    client = MlflowClient(tracking_uri=store)
    analysis = client.get_experiment_by_name("analysis")
    assert analysis.tags[EXPERIMENT_KIND_TAG] == CLASSIC_ML_KIND
    (run,) = client.search_runs([analysis.experiment_id])
    assert run.info.run_name == "analysis-qat" and run.info.status == "FINISHED"
    logged = sorted(a.path for a in client.list_artifacts(run.info.run_id))
    assert logged == ["bundled-v2048.png", "bundled-v8192.png"]
    # The analysis run stays out of the cells' experiment (and so out of its tables and fits).
    cells = client.get_experiment_by_name("qat").experiment_id
    assert len(client.search_runs([cells])) == 6
    assert f"to MLflow run {run.info.run_id}" in capsys.readouterr().out


def test_a_float_format_gets_its_own_column_and_int_runs_keep_the_table_they_had():
    from qat.report import _table

    runs = pd.DataFrame(
        {
            "params.model.name": ["nano", "nano", "nano"],
            "params.bits": ["4", "4", "16"],
            "params.qat_frac": ["0.5", "0.5", "0.5"],
            "params.fusion": ["False"] * 3,
            "params.tokens_total": ["1000"] * 3,
            "params.seed": ["0"] * 3,
            "metrics.final/val_loss": [3.2, 3.1, 3.0],
        }
    )
    assert "format" not in _table(runs).columns
    runs["params.quant.format"] = ["int", "mxfp4", None]
    table = _table(runs)
    assert list(table.columns[:2]) == ["model", "format"]
    assert sorted(zip(table["format"], table["bits"], strict=True)) == [
        ("int", "4"),
        ("int", "fp"),
        ("mxfp4", "4"),
    ]
