"""MLflow tracking against a real SQLite store (and a dead server address)."""

import subprocess
import sys
import textwrap

import pytest

from qat.errors import TrackingError
from qat.tracking import FINAL_METRIC, JsonlSink, MlflowSink, Tracker, resolve_tracking_uri


@pytest.fixture(scope="module")
def uri(tmp_path_factory):
    # One store per module: creating a fresh SQLite schema costs seconds of migrations.
    return f"sqlite:///{tmp_path_factory.mktemp('store')}/mlflow.db"


def test_relative_sqlite_uri_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri(None) == f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert resolve_tracking_uri(None) == "http://127.0.0.1:5000"


def test_concurrent_first_use_of_a_fresh_store_does_not_crash(tmp_path):
    script = textwrap.dedent(
        f"""
        from qat.tracking import Tracker
        tracker = Tracker("sqlite:///{tmp_path}/fresh.db", "race")
        tracker.open_run("k", "name")
        """
    )
    procs = [subprocess.Popen([sys.executable, "-c", script]) for _ in range(4)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0, 0]


def test_open_run_resumes_the_same_run_until_finished(uri):
    tracker = Tracker(uri, "exp")
    run_id = tracker.open_run("key1", "cell")
    assert tracker.open_run("key1", "cell") == run_id
    assert tracker.finished_run("key1") is None
    sink = MlflowSink(tracker, run_id, flush_every=1000)
    sink.log({"train/loss": 3.0}, step=100)
    sink.log({FINAL_METRIC: 2.5}, step=200)
    sink.close()
    tracker.end(run_id, "FINISHED")
    finished = tracker.finished_run("key1")
    assert finished is not None and finished.info.run_id == run_id
    history = tracker.client.get_metric_history(run_id, "train/loss")
    assert [(m.step, m.value) for m in history] == [(100, 3.0)]


def test_finished_without_final_metric_does_not_count(uri):
    tracker = Tracker(uri, "exp")
    run_id = tracker.open_run("key2", "cell")
    tracker.end(run_id, "FINISHED")
    assert tracker.finished_run("key2") is None


def test_params_are_not_relogged_with_new_values_on_resume(uri):
    tracker = Tracker(uri, "exp")
    run_id = tracker.open_run("key3", "cell")
    tracker.log_params(run_id, {"bits": 4, "trainer.device": "cuda"})
    tracker.log_params(run_id, {"bits": 4, "trainer.device": "cpu", "extra": [1, 2]})
    params = tracker.client.get_run(run_id).data.params
    assert params == {"bits": "4", "trainer.device": "cuda", "extra": "[1, 2]"}


def test_dead_server_is_one_clear_line():
    with pytest.raises(TrackingError, match=r"MLflow tracking server at http://127\.0\.0\.1:9"):
        Tracker("http://127.0.0.1:9", "exp")


def test_jsonl_sink_appends_records(tmp_path):
    path = tmp_path / "run" / "metrics.jsonl"
    sink = JsonlSink(path)
    sink.log({"train/loss": 1.5}, 10)
    sink.close()
    JsonlSink(path).log({"train/loss": 1.0}, 20)
    lines = path.read_text().splitlines()
    assert len(lines) == 2 and '"tokens": 20' in lines[1]


def test_experiments_are_classic_ml_experiments_even_when_made_before(uri):
    from mlflow.tracking import MlflowClient

    from qat.tracking_schema import CLASSIC_ML_KIND, EXPERIMENT_KIND_TAG

    client = MlflowClient(tracking_uri=uri)
    assert client.get_experiment(Tracker(uri, "fresh").experiment_id).tags == {
        EXPERIMENT_KIND_TAG: CLASSIC_ML_KIND
    }
    older = client.create_experiment("older")  # as stores made before the tag hold them
    assert Tracker(uri, "older").experiment_id == older
    assert client.get_experiment(older).tags[EXPERIMENT_KIND_TAG] == CLASSIC_ML_KIND


def test_fail_tags_the_reason_and_never_hides_the_error(uri):
    tracker = Tracker(uri, "exp")
    run_id = tracker.open_run("key3", "cell")
    tracker.fail(run_id, TrackingError("shard val.bin is truncated\nmore detail"))
    run = tracker.client.get_run(run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["error"] == "shard val.bin is truncated"
    tracker.fail("no-such-run", "a reason")  # a store that refuses is not a second error
