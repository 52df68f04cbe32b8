"""A finished run, found from what a user has at hand: a run folder, a run key or an MLflow
run id; its config, final checkpoint, tokenizer and final/val_loss.

A run has finished once its final checkpoint exists: the checkpoint at the run's total token
count is written only after the final evaluation (every backend but DeepSpeed's leaves model.pt
there; trainer=packed writes each member's final weights the same way).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from qat.checkpoint import MODEL_FILE, Checkpoint, list_checkpoints
from qat.config import RunConfig
from qat.data.info import TOKENIZER_FILE, read_meta
from qat.data.prepare import default_data_dir
from qat.data.tokenizer import EOT
from qat.errors import QatError
from qat.export.errors import ExportError
from qat.schedule import plan_phases
from qat.tracking_schema import FINAL_METRIC, RUN_KEY_TAG

RUN_ID_FILE = "mlflow_run_id"
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
_MLFLOW_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


@dataclass(frozen=True)
class FinishedRun:
    run_dir: Path
    config: RunConfig
    checkpoint: Checkpoint
    tokenizer_path: Path
    end_token: str  # the token that ends each document (the tokenizer's end of text)
    final_val_loss: float | None  # from the run folder's metrics.jsonl
    run_id: str | None  # the MLflow run, when the run folder names it

    @property
    def run_key(self) -> str:
        return self.run_dir.name

    def weights(self) -> dict[str, torch.Tensor]:
        return self.checkpoint.model_state()


def locate(run: str, runs_dir: Path, tracking_uri: str | None = None) -> FinishedRun:
    """The finished run that ``run`` names; ExportError (one line) otherwise."""
    run_dir = _run_dir(run, runs_dir, tracking_uri)
    config = _config(run_dir)
    plan = plan_phases(config)
    final = next(
        (c for c in list_checkpoints(run_dir / "checkpoints") if c.tokens == plan.tokens_total),
        None,
    )
    if final is None:
        raise ExportError(
            f"run {run_dir.name} has not finished: no final checkpoint at "
            f"{plan.tokens_total} tokens in {run_dir / 'checkpoints'}; train it to the end first"
        )
    if not (final.path / MODEL_FILE).exists():
        backend = final.state().get("backend", "torch")
        raise ExportError(
            f"run {run_dir.name}'s final checkpoint was written by trainer={backend}, which "
            f"leaves no {MODEL_FILE}; export supports runs of trainer=torch and trainer=packed"
        )
    data_dir = (
        Path(config.data.cache_dir)
        if config.data.cache_dir
        else default_data_dir(
            config.data.source, config.data.vocab_size, tokenizer=config.init.source
        )
    )
    tokenizer = data_dir / TOKENIZER_FILE
    if not tokenizer.is_file():
        raise ExportError(
            f"run {run_dir.name}'s tokenizer {tokenizer} is missing; set $QAT_DATA_DIR to the "
            "data folder it was trained with (or prepare the same data again)"
        )
    meta = read_meta(data_dir) or {}
    id_file = run_dir / RUN_ID_FILE
    run_id = id_file.read_text().strip() if id_file.is_file() else None
    end_token = str(meta.get("end_token", EOT))
    return FinishedRun(run_dir, config, final, tokenizer, end_token, _final_loss(run_dir), run_id)


def _run_dir(run: str, runs_dir: Path, tracking_uri: str | None) -> Path:
    for candidate in (Path(run), runs_dir / run):
        if (candidate / CONFIG_FILE).is_file():
            return candidate
    if _MLFLOW_RUN_ID.match(run):
        return runs_dir / _key_of_mlflow_run(run, tracking_uri)
    raise ExportError(
        f"{run!r} is neither a run folder, nor a run key with a folder in {runs_dir}, nor an "
        "MLflow run id"
    )


def _key_of_mlflow_run(run_id: str, tracking_uri: str | None) -> str:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from qat.tracking_schema import resolve_tracking_uri

    try:
        found = MlflowClient(tracking_uri=resolve_tracking_uri(tracking_uri)).get_run(run_id)
    except MlflowException as error:
        raise ExportError(f"MLflow run {run_id} not found: {error.message}") from None
    key = found.data.tags.get(RUN_KEY_TAG)
    if not key:
        raise ExportError(f"MLflow run {run_id} has no {RUN_KEY_TAG} tag: not a grid cell")
    return key


def _config(run_dir: Path) -> RunConfig:
    path = run_dir / CONFIG_FILE
    try:
        return RunConfig.from_dict(yaml.safe_load(path.read_text()))
    except (OSError, yaml.YAMLError, QatError, TypeError, AttributeError) as error:
        raise ExportError(f"cannot read the run's config {path}: {error}") from None


def _final_loss(run_dir: Path) -> float | None:
    path = run_dir / METRICS_FILE
    if not path.is_file():
        return None
    found = None
    for line in path.read_text().splitlines():
        record = json.loads(line)
        if FINAL_METRIC in record:
            found = float(record[FINAL_METRIC])
    return found
