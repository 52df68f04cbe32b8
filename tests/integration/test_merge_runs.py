"""python -m qat.merge_runs: the finished cells of several real SQLite MLflow stores in one."""

from __future__ import annotations

from pathlib import Path

from qat.merge_runs import main
from qat.tracking import FINAL_METRIC, RUN_KEY_TAG, Tracker

EXPERIMENT = "grid"


def add_cell(uri: str, key: str, status: str, losses: list[float]) -> None:
    """A cell's run as the trainer leaves it: params, a curve, the final metric if finished."""
    tracker = Tracker(uri, EXPERIMENT)
    run_id = tracker.open_run(key, f"cell-{key}")
    tracker.log_params(run_id, {"bits": 4, "qat_frac": 0.5, "tokens": 1000})
    for step, loss in enumerate(losses):
        tracker.call(lambda c, s=step, v=loss: c.log_metric(run_id, "train/loss", v, step=s))  # type: ignore[misc]
    if status == "FINISHED":
        tracker.call(lambda c: c.log_metric(run_id, FINAL_METRIC, losses[-1], step=len(losses)))
    tracker.set_tag(run_id, "pack_key", "p1")
    tracker.end(run_id, status)


def cells(uri: str) -> dict[str, object]:
    tracker = Tracker(uri, EXPERIMENT)
    runs = tracker.call(lambda c: c.search_runs([tracker.experiment_id]))
    return {run.data.tags[RUN_KEY_TAG]: run for run in runs}


def test_finished_cells_are_copied_whole_once(tmp_path: Path, capsys) -> None:
    first, second = (f"sqlite:///{tmp_path / name}.db" for name in ("first", "second"))
    into = tmp_path / "merged.db"
    add_cell(first, "a", "FINISHED", [5.0, 4.0, 3.5])
    add_cell(first, "b", "KILLED", [5.0, 4.5])
    add_cell(second, "c", "FINISHED", [5.1, 3.9])
    add_cell(second, "a", "FINISHED", [9.0])  # also finished in the first store
    add_cell(f"sqlite:///{into}", "c", "FINISHED", [5.1, 3.9])  # already in the target

    assert (
        main([str(tmp_path / "first.db"), second, "--into", str(into), "--experiment", EXPERIMENT])
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith(
        "copied 1 finished cells, 0 already in the target, 1 not finished (left out), "
        "0 of them with their artifacts"
    )
    assert lines[1].endswith(
        "copied 0 finished cells, 2 already in the target, 0 not finished (left out), "
        "0 of them with their artifacts"
    )

    merged = cells(f"sqlite:///{into}")
    assert sorted(merged) == ["a", "c"]
    run = merged["a"]
    source = cells(first)["a"]
    assert run.info.status == "FINISHED" and run.info.run_name == "cell-a"  # type: ignore[attr-defined]
    assert run.data.params == source.data.params  # type: ignore[attr-defined]
    assert run.data.tags["pack_key"] == "p1"  # type: ignore[attr-defined]
    assert run.info.end_time == source.info.end_time  # type: ignore[attr-defined]
    tracker = Tracker(f"sqlite:///{into}", EXPERIMENT)
    curve = tracker.call(lambda c: c.get_metric_history(run.info.run_id, "train/loss"))  # type: ignore[attr-defined]
    assert [(point.step, point.value) for point in curve] == [(0, 5.0), (1, 4.0), (2, 3.5)]
    assert tracker.finished_run("a") is not None  # a launcher now skips the cell

    assert main([str(tmp_path / "first.db"), "--into", str(into), "--experiment", EXPERIMENT]) == 0
    assert "copied 0 finished cells, 1 already" in capsys.readouterr().out
    assert sorted(cells(f"sqlite:///{into}")) == ["a", "c"]


def test_a_missing_source_is_one_line_and_creates_nothing(tmp_path: Path, capsys) -> None:
    into = tmp_path / "merged.db"
    code = main([str(tmp_path / "typo.db"), "--into", str(into), "--experiment", EXPERIMENT])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "typo.db: no such MLflow store" in err and "\n" not in err
    assert not (tmp_path / "typo.db").exists() and not into.exists()


def test_a_source_that_is_the_target_is_refused(tmp_path: Path, capsys) -> None:
    store = tmp_path / "store.db"
    add_cell(f"sqlite:///{store}", "a", "FINISHED", [4.0])
    assert main([str(store), "--into", str(store), "--experiment", EXPERIMENT]) == 2
    assert "is the store merged into" in capsys.readouterr().err


def test_artifacts_come_along_where_their_folder_is_here(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    import shutil

    monkeypatch.chdir(tmp_path)  # the stores' default artifact root, ./mlruns, lands here
    source, into = f"sqlite:///{tmp_path / 'source.db'}", tmp_path / "merged.db"
    for key in ("a", "b"):
        add_cell(source, key, "FINISHED", [4.0, 3.0])
        run = cells(source)[key]
        curve = tmp_path / "loss_curve.png"
        curve.write_bytes(b"png of " + key.encode())
        Tracker(source, EXPERIMENT).log_artifact(run.info.run_id, curve)  # type: ignore[attr-defined]
    gone = cells(source)["b"].info.artifact_uri  # type: ignore[attr-defined]
    shutil.rmtree(gone.removeprefix("file://"))  # as in a store from another machine

    assert main([source, "--into", str(into), "--experiment", EXPERIMENT]) == 0
    assert (
        "copied 2 finished cells, 0 already in the target, 0 not finished (left out), "
        "1 of them with their artifacts" in capsys.readouterr().out
    )
    target = Tracker(f"sqlite:///{into}", EXPERIMENT)
    merged = cells(f"sqlite:///{into}")
    listed = target.call(lambda c: c.list_artifacts(merged["a"].info.run_id))  # type: ignore[attr-defined]
    assert [item.path for item in listed] == ["loss_curve.png"]


def test_a_copy_that_fails_halfway_leaves_no_run_behind(tmp_path: Path, monkeypatch) -> None:
    import pytest

    from qat.store import merge

    source, into = f"sqlite:///{tmp_path / 'source.db'}", f"sqlite:///{tmp_path / 'merged.db'}"
    add_cell(source, "a", "FINISHED", [4.0, 3.0])

    def broken(*args: object) -> None:
        raise RuntimeError("the disk filled up")

    monkeypatch.setattr(merge, "_copy_artifacts", broken)  # after params and metrics
    with pytest.raises(RuntimeError):
        merge.merge_finished(source, into, EXPERIMENT)
    assert cells(into) == {}  # no half-copied run for a launcher to take as in progress
    monkeypatch.undo()
    assert merge.merge_finished(source, into, EXPERIMENT).copied == 1
    assert Tracker(into, EXPERIMENT).finished_run("a") is not None


def test_a_gzipped_store_is_merged_as_it_is_and_a_corrupt_one_is_one_line(
    tmp_path: Path, capsys
) -> None:
    import gzip

    plain = tmp_path / "call.db"
    add_cell(f"sqlite:///{plain}", "a", "FINISHED", [5.0, 4.0])
    packed = tmp_path / "call.db.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    plain.unlink()
    into = tmp_path / "merged.db"

    assert main([str(packed), "--into", str(into), "--experiment", EXPERIMENT]) == 0
    assert "copied 1 finished cells" in capsys.readouterr().out
    assert sorted(cells(f"sqlite:///{into}")) == ["a"]
    assert packed.is_file()  # the source is read from a temporary copy, never changed

    corrupt = tmp_path / "torn.db.gz"
    corrupt.write_bytes(packed.read_bytes()[:100])
    assert main([str(corrupt), "--into", str(into), "--experiment", EXPERIMENT]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "torn.db.gz: not a readable gzip file" in err[0]
    assert sorted(cells(f"sqlite:///{into}")) == ["a"]
