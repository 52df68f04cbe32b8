"""Experiment tracking: MLflow (one run per grid cell) and a metrics.jsonl in the run folder.

The schema (names, default store) is qat.tracking_schema's.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from qat.errors import TrackingError
from qat.locks import file_lock
from qat.tracking_schema import (
    CLASSIC_ML_KIND,
    ERROR_TAG,
    EXPERIMENT_KIND_TAG,
    FINAL_METRIC,
    RUN_KEY_TAG,
    resolve_tracking_uri,
)
from qat.units import format_count

if TYPE_CHECKING:
    from qat.config import RunConfig

_T = TypeVar("_T")

# A dead server should fail in seconds, not after MLflow's default minutes of retries.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")


class MetricSink(Protocol):
    def log(self, metrics: dict[str, float], step: int) -> None: ...

    def close(self) -> None: ...


class JsonlSink:
    """Appends one JSON object per log call: {"tokens": step, "time": ..., **metrics}."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("a")

    def log(self, metrics: dict[str, float], step: int) -> None:
        self._file.write(json.dumps({"tokens": step, "time": time.time(), **metrics}) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class MlflowSink:
    """Buffers metrics and sends them in batches (one SQLite write per flush, not per value)."""

    def __init__(self, tracker: Tracker, run_id: str, flush_every: int = 20) -> None:
        self._tracker, self._run_id, self._flush_every = tracker, run_id, flush_every
        self._buffer: list[Any] = []
        self._calls = 0

    def log(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._buffer.extend(Metric(k, float(v), now, step) for k, v in metrics.items())
        self._calls += 1
        # Evaluation metrics are rare and precious: send them at once, not with the next batch.
        evaluation = any(not key.startswith("train/") for key in metrics)
        if evaluation or self._calls % self._flush_every == 0:
            self.flush()

    def flush(self) -> None:
        while self._buffer:
            batch, self._buffer = self._buffer[:900], self._buffer[900:]
            # b=batch binds this batch (ruff B023); mypy cannot infer a lambda with a default
            self._tracker.call(lambda c, b=batch: c.log_batch(self._run_id, metrics=b))  # type: ignore[misc]

    def close(self) -> None:
        self.flush()


class Tracker:
    """A thin, retrying wrapper over MlflowClient for one experiment."""

    def __init__(self, uri: str | None, experiment: str) -> None:
        from mlflow.tracking import MlflowClient

        self.uri = resolve_tracking_uri(uri)
        ensure_store(self.uri)
        self.client = MlflowClient(tracking_uri=self.uri)
        self.experiment_id = self._experiment_id(experiment)

    def call(self, action: Callable[[Any], _T]) -> _T:
        """Run ``action(client)``, retrying SQLite lock contention; other failures are one line."""
        delay = 0.2
        for attempt in range(40):
            try:
                return action(self.client)
            except Exception as error:  # MLflow raises many types; classify by message
                text = str(error)
                if "database is locked" in text and attempt < 39:
                    time.sleep(delay)
                    delay = min(delay * 1.5, 3.0)
                    continue
                raise TrackingError(_describe(self.uri, error)) from error
        raise AssertionError("unreachable")

    def _experiment_id(self, name: str) -> str:
        return self.call(lambda c: classic_experiment(c, name))

    def runs_with_key(self, key: str) -> list[Any]:
        return self.call(
            lambda c: c.search_runs(
                [self.experiment_id], filter_string=f"tags.{RUN_KEY_TAG} = '{key}'"
            )
        )

    def finished_run(self, key: str) -> Any | None:
        for run in self.runs_with_key(key):
            if run.info.status == "FINISHED" and FINAL_METRIC in run.data.metrics:
                return run
        return None

    def open_run(self, key: str, name: str, run_id_hint: str | None = None) -> str:
        """Reopen this key's unfinished run (a resume) or create a new one; returns its id."""
        runs = self.runs_with_key(key)
        chosen = next((r for r in runs if r.info.run_id == run_id_hint), None)
        if chosen is None and runs:
            chosen = max(runs, key=lambda r: r.info.start_time or 0)
        if chosen is not None:
            run_id = chosen.info.run_id
            self.call(lambda c: c.update_run(run_id, status="RUNNING"))
            return run_id
        run = self.call(
            lambda c: c.create_run(self.experiment_id, run_name=name, tags={RUN_KEY_TAG: key})
        )
        return run.info.run_id

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        """Log params not logged yet (MLflow forbids changing a logged value on resume)."""
        from mlflow.entities import Param

        existing = self.call(lambda c: c.get_run(run_id)).data.params
        fresh = [Param(k, _param_value(v)) for k, v in params.items() if k not in existing]
        for start in range(0, len(fresh), 90):
            batch = fresh[start : start + 90]
            # b=batch binds this batch (ruff B023); mypy cannot infer a lambda with a default
            self.call(lambda c, b=batch: c.log_batch(run_id, params=b))  # type: ignore[misc]

    def log_artifact(self, run_id: str, path: Path) -> None:
        self.call(lambda c: c.log_artifact(run_id, str(path)))

    def set_tag(self, run_id: str, key: str, value: str) -> None:
        self.call(lambda c: c.set_tag(run_id, key, value))

    def end(self, run_id: str, status: str) -> None:
        self.call(lambda c: c.set_terminated(run_id, status=status))

    def fail(self, run_id: str, error: BaseException | str, status: str = "FAILED") -> None:
        """End the run ``status`` with the reason as its ``error`` tag; never raises, so the
        error being reported is the one the user sees (a dead store must not hide it)."""
        reason = error if isinstance(error, str) else failure_reason(error)
        with contextlib.suppress(Exception):
            self.set_tag(run_id, ERROR_TAG, reason)
        with contextlib.suppress(Exception):
            self.end(run_id, status)


def failure_reason(error: BaseException) -> str:
    """The one line a FAILED run's ``error`` tag holds: the message, else the error's type."""
    lines = str(error).strip().splitlines()
    text = lines[0] if lines else type(error).__name__
    return text[:5000]  # MLflow caps a tag value at 8,000 characters


def classic_experiment(client: Any, name: str) -> str:
    """The id of experiment ``name``, created if missing, tagged a classic ML experiment (MLflow's
    UI then opens its runs table, not the GenAI traces view); another process creating it at
    the same time is fine."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return str(client.create_experiment(name, tags={EXPERIMENT_KIND_TAG: CLASSIC_ML_KIND}))
        except Exception:  # another job created it first
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if EXPERIMENT_KIND_TAG not in experiment.tags:  # made before the tag, or by another tool
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, CLASSIC_ML_KIND)
    return str(experiment.experiment_id)


def run_name(config: RunConfig) -> str:
    """``nano-b4-f0.3-t2M-s0-bundled-v2048-a63977``: the swept keys in a readable order (a float
    format's name, e.g. mxfp4, in place of b4), the QAT
    knobs when set, and the run key's first characters, so no two cells share a name."""
    parts = [config.model.name, *config.quantization_label]
    parts += [f"t{format_count(config.tokens)}", f"s{config.seed}", data_label(config)]
    return "-".join([*parts, config.run_key[:6]])


def data_label(config: RunConfig) -> str:
    """The corpus and vocabulary in a few characters: bundled-v2048, mytexts-v8192; a train
    fraction below 1 follows: bundled-v2048-train0.5 (its first half), bundled-v2048-spread0.5
    (half of its windows, drawn across it)."""
    source = config.data.source
    if source.startswith("hf:"):
        source = source[len("hf:") :].split(":")[0]
    name = Path(source.rstrip("/")).name or source
    fraction = config.data.train_fraction
    part = "train" if config.data.train_part == "leading" else config.data.train_part
    return f"{name}-v{config.data.vocab_size}" + (f"-{part}{fraction:g}" if fraction < 1 else "")


def ensure_store(uri: str) -> None:
    """Create a SQLite store's schema under a file lock.

    Concurrent first use of a fresh SQLite store races on schema migration (2 of 4 processes
    crashed when tried), so the first job migrates while the others wait on the lock.
    """
    from mlflow.tracking import MlflowClient

    if not uri.startswith("sqlite:///"):
        return
    db_path = Path(uri[len("sqlite:///") :])
    db_path.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(db_path.with_name(db_path.name + ".lock")):
        try:
            MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
        except Exception as error:
            raise TrackingError(_describe(uri, error)) from error


def _param_value(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, list | tuple | dict) else str(value)
    return text[:6000]


def _describe(uri: str, error: Exception) -> str:
    first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
    if uri.startswith(("http://", "https://")):
        return f"MLflow tracking server at {uri} failed: {first_line[:300]}"
    return f"MLflow store {uri} failed: {first_line[:300]}"
