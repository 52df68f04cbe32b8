"""One grid cell, for every backend and any world size: skip it if its run key is FINISHED,
claim it, open its MLflow run, branch it from the shared FP trunk, train it (qat.engine), and end
the run FINISHED only once ``final/val_loss`` is logged (FAILED on an error, KILLED on Ctrl-C or
a requeue). The main process claims and tracks; every process trains.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from qat.config import RunConfig, flatten
from qat.data import DatasetInfo, default_data_dir, prepare
from qat.data.split import evaluation_note
from qat.engine import Trainer, effective_precision, make_backend
from qat.errors import ConfigError
from qat.loss_curve import log_loss_curve
from qat.pretrained import given_tokenizer, load_pretrained, strip_prefix
from qat.schedule import law_tokens, warmup_multiplier, warmup_steps
from qat.store.claim import CellBusy, Claim
from qat.store.provenance import check_all, mismatches
from qat.store.trunk_store import TrunkStore
from qat.tracking import JsonlSink, MetricSink, MlflowSink, Tracker, run_name
from qat.tracking_schema import (
    BRANCH_TOKENS_TAG,
    DATA_FINGERPRINT,
    FINAL_METRIC,
    FP_METRIC,
    N_PARAMS,
    N_PARAMS_TOTAL,
    PRECISION,
    TOKENS_FP,
    TOKENS_QAT,
    TOKENS_TOTAL,
    TRAIN_SPLIT_TOKENS,
    TRUNK_KEY_TAG,
    WORLD_SIZE,
)
from qat.trunk import branch_step


@dataclass(frozen=True)
class RunResult:
    run_key: str
    run_id: str  # "" when this process tracks nothing (a busy cell, a rank > 0)
    skipped: bool
    final_val_loss: float
    fp_val_loss: float | None


def load_data(config: RunConfig) -> DatasetInfo:
    """The cell's prepared dataset (prepared now if this machine has not yet)."""
    data, init = config.data, config.init.source
    out_dir = Path(data.cache_dir) if data.cache_dir else None
    info = prepare(
        data.source,
        out_dir or default_data_dir(data.source, data.vocab_size, tokenizer=init),
        vocab_size=data.vocab_size,
        val_fraction=data.val_fraction,
        # A pretrained start reads the data with its own tokenizer.
        tokenizer=given_tokenizer(init) if init is not None else None,
        min_val_tokens=data.eval_tokens,
    )
    if (note := evaluation_note(info.n_val_tokens, data.eval_tokens, data.seq_len)) is not None:
        print(note, flush=True)
    return info


def run_cell(config: RunConfig) -> RunResult:
    """Train one grid cell to completion, or skip it (FINISHED already, or another live job
    holds it)."""
    backend = make_backend(config)
    # The store first: a dead tracking server fails in seconds, before any data is prepared.
    tracker = Tracker(config.tracking.uri, config.tracking.experiment) if backend.is_main else None
    data = load_data(config)
    provenance = {
        PRECISION: effective_precision(config, backend.device),
        DATA_FINGERPRINT: data.fingerprint,
    }
    key = config.run_key
    run_dir = Path(config.run_dir) / key
    claim: Claim | None = None
    # What the main process decided, for every process: train (None), a result, or a refusal.
    verdict: RunResult | ConfigError | None = None
    if tracker is not None:
        verdict = finished_result(config, tracker, provenance)
        if verdict is None:
            claim = Claim(run_dir)
            try:
                claim.acquire()
                _check_provenance(config, run_dir, provenance)
            except CellBusy as busy:
                print(f"[{key}] {busy}: skipping")
                claim = None
                verdict = RunResult(key, "", True, float("nan"), None)
            except ConfigError as refusal:
                claim.release()
                verdict = refusal
    verdict = cast(RunResult | ConfigError | None, backend.broadcast(verdict))
    if isinstance(verdict, ConfigError):
        raise verdict
    if verdict is not None:
        backend.finish()
        return verdict
    try:
        initial = (
            load_pretrained(strip_prefix(config.init.source)).weights
            if config.init.source is not None
            else None
        )
        trainer = Trainer(config, data, run_dir / "checkpoints", backend, initial_weights=initial)
        if tracker is not None:
            result = _train_and_track(trainer, tracker, run_dir, provenance)
        else:  # a rank > 0 of a multi-process cell: trains, tracks nothing
            final, fp = trainer.train(lambda metrics, tokens: None)
            result = RunResult(key, "", False, final, fp)
    finally:
        if claim is not None:
            with contextlib.suppress(Exception):
                claim.release()
    backend.finish()
    return result


def _check_provenance(config: RunConfig, run_dir: Path, provenance: dict[str, str]) -> None:
    """Refuse, before any MLflow run is opened, a run folder or trunk trained otherwise."""
    folders = {run_dir: "run folder"}
    if config.trunk == "share" and branch_step(config) > 0:
        folders[TrunkStore(config).dir] = "trunk"
    check_all(folders, provenance)


def finished_result(
    config: RunConfig, tracker: Tracker, provenance: dict[str, str]
) -> RunResult | None:
    """The cell's result if its run key is already FINISHED in the store, else None; refused if
    that run was trained with other provenance than this launch would train with."""
    key = config.run_key
    finished = tracker.finished_run(key)
    if finished is None:
        return None
    run_id = finished.info.run_id
    differ = mismatches(finished.data.params, provenance)
    if differ:
        raise ConfigError(
            f"run key {key} is FINISHED as MLflow run {run_id} with other settings "
            f"({'; '.join(differ)}): set trainer.precision to match it, or log to another "
            "tracking.experiment"
        )
    print(f"[{key}] already FINISHED as MLflow run {run_id}: skipping")
    metrics = finished.data.metrics
    return RunResult(key, run_id, True, metrics[FINAL_METRIC], metrics.get(FP_METRIC))


def _train_and_track(
    trainer: Trainer, tracker: Tracker, run_dir: Path, provenance: dict[str, str]
) -> RunResult:
    config = trainer.config
    key = config.run_key
    id_file = run_dir / "mlflow_run_id"
    hint = id_file.read_text().strip() if id_file.exists() else None
    run_id = tracker.open_run(key, run_name(config), hint)
    id_file.write_text(run_id)
    try:
        _log_setup(tracker, run_id, trainer, provenance)
        sinks: list[MetricSink] = [
            MlflowSink(tracker, run_id),
            JsonlSink(run_dir / "metrics.jsonl"),
        ]
        log = _fan_out(sinks)
        try:
            if trainer.step == 0 and config.trunk == "share":
                _branch_from_trunk(trainer, tracker, run_id, log)
            final, fp = trainer.train(log)
        finally:
            for sink in sinks:
                sink.close()  # every metric logged up to a failure reaches MLflow and the file
    except (KeyboardInterrupt, SystemExit):  # Ctrl-C, or a requeue after preemption
        with contextlib.suppress(Exception):
            tracker.end(run_id, "KILLED")
        raise
    except BaseException as error:
        # Marked FAILED (not FINISHED), its reason a tag: a rerun resumes from the newest
        # checkpoint.
        tracker.fail(run_id, error)
        raise
    log_loss_curve(tracker, run_id, config)
    tracker.end(run_id, "FINISHED")
    return RunResult(key, run_id, False, final, fp)


def _fan_out(sinks: list[MetricSink]) -> Callable[[dict[str, float], int], None]:
    def log(metrics: dict[str, float], tokens: int) -> None:
        for sink in sinks:
            sink.log(metrics, tokens)

    return log


def _branch_from_trunk(
    trainer: Trainer, tracker: Tracker, run_id: str, log: Callable[[dict[str, float], int], None]
) -> None:
    config = trainer.config
    step = branch_step(config)
    if step <= 0:
        return  # the cell leaves the stable phase at once: nothing to share
    store = TrunkStore(config)
    try:
        checkpoint = store.ensure(step, extend_trunk(config, trainer.data))
    except Exception:
        # The trunk failed (a NaN loss): its curve up to the failure is this cell's record too.
        for record in store.metrics_until(sys.maxsize):
            log({k: v for k, v in record.items() if k.startswith("train/")}, record["tokens"])
        raise
    trainer.load(checkpoint)
    tracker.set_tag(run_id, TRUNK_KEY_TAG, store.key)
    tracker.set_tag(run_id, BRANCH_TOKENS_TAG, str(checkpoint.tokens))
    for record in store.metrics_until(checkpoint.tokens):  # the shared prefix of the curve
        log({k: v for k, v in record.items() if k.startswith("train/")}, record["tokens"])
    print(f"[{config.run_key}] branched from trunk {store.key} at {checkpoint.tokens} tokens")


def extend_trunk(config: RunConfig, data: DatasetInfo) -> Callable[[TrunkStore, int], None]:
    """The function that trains ``config``'s FP trunk up to a step (the store holds the lock);
    its trainer has a backend of its own, beside the waiting cell's."""

    def extend(store: TrunkStore, until: int) -> None:
        start = store.latest_before(until)
        backend = make_backend(config)
        trainer = Trainer(
            config, data, store.checkpoint_dir, backend, resume=start, label=f"trunk {store.key}"
        )
        sink = JsonlSink(store.dir / "metrics.jsonl")
        print(f"[trunk {store.key}] training steps {trainer.step}..{until}", flush=True)
        warmup = warmup_steps(config.schedule, trainer.plan.tokens_per_step)
        try:
            trainer.advance(
                until,
                lambda step: warmup_multiplier(step, warmup),
                sink.log,
                pinned_steps=store.wanted(),
            )
        finally:
            sink.close()

    return extend


def _log_setup(
    tracker: Tracker,
    run_id: str,
    trainer: Trainer,
    provenance: dict[str, str],
) -> None:
    counts = (trainer.n_params, trainer.n_params_total)
    world_size = trainer.backend.world_size
    train_tokens = trainer.data.n_train_tokens
    log_setup(tracker, run_id, trainer.config, counts, world_size, provenance, train_tokens)


def log_setup(
    tracker: Tracker,
    run_id: str,
    config: RunConfig,
    counts: tuple[int, int],
    world_size: int,
    provenance: dict[str, str],
    train_split_tokens: int,
) -> None:
    """A cell's params (the flattened config, the law's counts, the train split's size,
    provenance) and config.yaml."""
    import yaml

    tokens_fp, tokens_qat, tokens_total = law_tokens(config)
    params: dict[str, Any] = flatten(config.to_dict())
    params.update(
        {
            "run_key": config.run_key,
            N_PARAMS: counts[0],
            N_PARAMS_TOTAL: counts[1],
            TOKENS_FP: tokens_fp,
            TOKENS_QAT: tokens_qat,
            TOKENS_TOTAL: tokens_total,
            WORLD_SIZE: world_size,
            TRAIN_SPLIT_TOKENS: train_split_tokens,
            **provenance,
        }
    )
    tracker.log_params(run_id, params)
    run_dir = Path(config.run_dir) / config.run_key
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path = run_dir / "config.yaml"
    config_path.write_text(yaml.safe_dump(_plain(config.to_dict()), sort_keys=False))
    tracker.log_artifact(run_id, config_path)


def _plain(value: object) -> object:
    """Tuples as lists: safe_dump writes only plain YAML types."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
