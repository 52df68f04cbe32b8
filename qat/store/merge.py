"""Copy the finished cells of one MLflow store into another.

A grid trained on machines that do not share a store (a GPU lent call by call, two clusters,
a laptop and a node) ends as several stores. A cell is finished for every launcher when the
store it reads holds a FINISHED run with its run key and final metric, so merging the finished
runs into one store lets the next call skip them and lets analysis.collect read one table.

Only finished runs are copied: an unfinished run in the target would be reopened by the cell's
next attempt as if its checkpoint were at hand. A run key already finished in the target is
left alone, so merging twice adds nothing.
"""

from __future__ import annotations

import contextlib
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qat.tracking import FINAL_METRIC, RUN_KEY_TAG, Tracker

# MLflow's log_batch limits: 100 params and 1,000 metrics a call.
PARAMS_PER_BATCH = 90
METRICS_PER_BATCH = 1000
# Set by create_run itself from its run_name argument.
RUN_NAME_TAG = "mlflow.runName"


@dataclass(frozen=True)
class MergeReport:
    copied: int
    already_there: int
    not_finished: int  # and runs that are not cells (no run key)
    with_artifacts: int  # copied runs whose artifacts were found here and copied too
    artifacts_missing: int  # copied runs whose source artifacts could not be read


def experiment_runs(tracker: Tracker) -> list[Any]:
    """Every run of the tracker's experiment, oldest first."""
    runs: list[Any] = []
    token = None
    while True:
        page = tracker.call(
            lambda c, t=token: c.search_runs(  # type: ignore[misc]
                [tracker.experiment_id], max_results=1000, page_token=t
            )
        )
        runs.extend(page)
        token = page.token
        if not token:
            break
    return sorted(runs, key=lambda run: run.info.start_time or 0)


def _is_finished(run: Any) -> bool:
    return bool(run.info.status == "FINISHED" and FINAL_METRIC in run.data.metrics)


def _copy_run(source: Tracker, target: Tracker, run: Any) -> bool | None:
    """Copy one run (tags, params, every metric's history, status, artifacts); returns whether
    its artifacts came along (None: none were found here, as for a store from a machine whose
    artifact folders stayed there)."""
    from mlflow.entities import Param

    info, data = run.info, run.data
    tags = {key: value for key, value in data.tags.items() if key != RUN_NAME_TAG}
    created = target.call(
        lambda c: c.create_run(
            target.experiment_id, start_time=info.start_time, tags=tags, run_name=info.run_name
        )
    )
    run_id = created.info.run_id
    try:
        params = [Param(key, value) for key, value in data.params.items()]
        for start in range(0, len(params), PARAMS_PER_BATCH):
            batch = params[start : start + PARAMS_PER_BATCH]
            target.call(lambda c, b=batch: c.log_batch(run_id, params=b))  # type: ignore[misc]
        history = [
            point
            for key in sorted(data.metrics)
            for point in source.call(lambda c, k=key: c.get_metric_history(info.run_id, k))  # type: ignore[misc]
        ]
        for start in range(0, len(history), METRICS_PER_BATCH):
            batch = history[start : start + METRICS_PER_BATCH]
            target.call(lambda c, b=batch: c.log_batch(run_id, metrics=b))  # type: ignore[misc]
        artifacts_copied = _copy_artifacts(source, target, info.run_id, run_id)
        target.call(lambda c: c.set_terminated(run_id, status=info.status, end_time=info.end_time))
    except BaseException:
        # A half-copied run would look like a cell in progress to the next launcher: remove it,
        # so that merging again copies the cell whole.
        with contextlib.suppress(Exception):
            target.client.delete_run(run_id)
        raise
    return artifacts_copied


def _copy_artifacts(
    source: Tracker, target: Tracker, source_id: str, target_id: str
) -> bool | None:
    with tempfile.TemporaryDirectory() as folder:
        try:
            if not source.client.list_artifacts(source_id):
                return None
            local = source.client.download_artifacts(source_id, "", folder)
        except Exception:  # the source's artifact folder lived on another machine
            return False
        for path in sorted(Path(local).iterdir()):
            if path.is_dir():
                target.call(lambda c, p=path: c.log_artifacts(target_id, str(p), p.name))  # type: ignore[misc]
            else:
                target.call(lambda c, p=path: c.log_artifact(target_id, str(p)))  # type: ignore[misc]
    return True


def merge_finished(source_uri: str, target_uri: str, experiment: str) -> MergeReport:
    """Copy ``experiment``'s finished runs from the store at ``source_uri`` into the one at
    ``target_uri`` (created if missing), skipping run keys the target has finished."""
    source = Tracker(source_uri, experiment)
    target = Tracker(target_uri, experiment)
    copied = already = unfinished = missing = with_artifacts = 0
    for run in experiment_runs(source):
        key = run.data.tags.get(RUN_KEY_TAG)
        if key is None or not _is_finished(run):
            unfinished += 1
            continue
        if target.finished_run(key) is not None:
            already += 1
            continue
        artifacts = _copy_run(source, target, run)
        missing += artifacts is False
        with_artifacts += artifacts is True
        copied += 1
    return MergeReport(copied, already, unfinished, with_artifacts, missing)
