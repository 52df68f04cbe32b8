"""A pack of cells (trainer=packed): cells of one model shape trained as one batched model.

Each member is still a cell: its run key, its claim, its MLflow run with the params and metrics
of an unpacked cell (the trunk prefix of its curve included), skipped when FINISHED. The pack
trains them together (qat.engine.packed) and checkpoints as a whole under
``<run_dir>/packs/<pack key>/``: a rerun of the same cells resumes every unfinished member.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from qat.cell import RunResult, finished_result, load_data, log_setup, run_name
from qat.checkpoint import save_weights
from qat.config import RunConfig, run_key
from qat.engine import effective_precision
from qat.engine.backend import resolve_device
from qat.engine.packed import PackedTrainer, plan_members
from qat.engine.packed.trainer import Record
from qat.errors import TrainingError
from qat.loss_curve import log_loss_curve
from qat.schedule import plan_phases
from qat.store.claim import CellBusy, Claim
from qat.store.provenance import check_all
from qat.tracking import JsonlSink, MetricSink, MlflowSink, Tracker
from qat.tracking_schema import (
    BRANCH_TOKENS_TAG,
    DATA_FINGERPRINT,
    PACK_KEY_TAG,
    PRECISION,
    TRUNK_KEY_TAG,
)


@dataclass
class PackOutcome:
    results: dict[str, RunResult] = field(default_factory=dict)  # by run key
    failures: dict[str, str] = field(default_factory=dict)  # run key → error


def pack_key(configs: list[RunConfig]) -> str:
    return run_key({"pack": sorted(config.run_key for config in configs)})


def pack_dir(configs: list[RunConfig]) -> Path:
    return Path(configs[0].run_dir) / "packs" / pack_key(configs)


class _TrackedMembers:
    """The pack's MemberEvents: each member's MLflow run, metrics.jsonl and claim."""

    def __init__(self, tracker: Tracker, outcome: PackOutcome, train_split_tokens: int) -> None:
        self.tracker = tracker
        self.outcome = outcome
        self.train_split_tokens = train_split_tokens
        self.run_ids: dict[str, str] = {}
        self.sinks: dict[str, list[MetricSink]] = {}
        self.claims: dict[str, Claim] = {}
        self.configs: dict[str, RunConfig] = {}

    def open(
        self,
        config: RunConfig,
        key_of_pack: str,
        counts: tuple[int, int],
        provenance: dict[str, str],
    ) -> None:
        key = config.run_key
        run_dir = Path(config.run_dir) / key
        id_file = run_dir / "mlflow_run_id"
        hint = id_file.read_text().strip() if id_file.exists() else None
        run_id = self.tracker.open_run(key, run_name(config), hint)
        id_file.write_text(run_id)
        self.run_ids[key] = run_id
        self.configs[key] = config
        log_setup(self.tracker, run_id, config, counts, 1, provenance, self.train_split_tokens)
        self.tracker.set_tag(run_id, PACK_KEY_TAG, key_of_pack)
        self.sinks[key] = [MlflowSink(self.tracker, run_id), JsonlSink(run_dir / "metrics.jsonl")]

    def forked(self, key: str, trunk: str, tokens: int, prefix: list[Record]) -> None:
        run_id = self.run_ids[key]
        self.tracker.set_tag(run_id, TRUNK_KEY_TAG, trunk)
        self.tracker.set_tag(run_id, BRANCH_TOKENS_TAG, str(tokens))
        for metrics, at in prefix:
            self.log(key, metrics, at)

    def log(self, key: str, metrics: dict[str, float], tokens: int) -> None:
        for sink in self.sinks[key]:
            sink.log(metrics, tokens)

    def finished(
        self, key: str, final: float, fp: float | None, weights: dict[str, torch.Tensor]
    ) -> None:
        config = self.configs[key]
        plan = plan_phases(config)
        state = {
            "step": plan.total_steps,
            "quantized": plan.quantized,
            "fp_val_loss": fp,
            "backend": "packed",
            "pinned": False,
        }
        # The final weights in the run folder, as an unpacked cell leaves them (for export).
        save_weights(Path(config.run_dir) / key / "checkpoints", plan.tokens_total, weights, state)
        self._close(key)
        run_id = self.run_ids.pop(key)
        log_loss_curve(self.tracker, run_id, config)
        self.tracker.end(run_id, "FINISHED")
        self.outcome.results[key] = RunResult(key, run_id, False, final, fp)
        self._release(key)

    def failed(self, key: str, error: Exception) -> None:
        print(f"error: [{key}] {error}", flush=True)
        self._close(key)
        run_id = self.run_ids.pop(key, None)
        if run_id is not None:
            self.tracker.fail(run_id, error)
        self.outcome.failures[key] = str(error)
        self._release(key)

    def end_all(self, status: str) -> None:
        """The pack stopped early: every member still open ends ``status`` (resumable)."""
        for key, run_id in list(self.run_ids.items()):
            with contextlib.suppress(Exception):
                self._close(key)
                self.tracker.end(run_id, status)
        self.run_ids.clear()

    def release_all(self) -> None:
        for key in list(self.claims):
            self._release(key)

    def _close(self, key: str) -> None:
        for sink in self.sinks.pop(key, []):
            sink.close()

    def _release(self, key: str) -> None:
        claim = self.claims.pop(key, None)
        if claim is not None:
            with contextlib.suppress(Exception):
                claim.release()


def run_pack(configs: list[RunConfig]) -> PackOutcome:
    """Train the cells ``configs`` as one pack; FINISHED cells and cells another live job holds
    are skipped. A member that fails (a NaN loss) is FAILED alone; the others go on."""
    lineages = plan_members(configs)  # refuses cells that do not fit one pack, in one line
    first = configs[0]
    device = resolve_device(first.trainer.device)
    tracker = Tracker(first.tracking.uri, first.tracking.experiment)
    data = load_data(first)
    provenance = {PRECISION: effective_precision(first, device), DATA_FINGERPRINT: data.fingerprint}
    outcome = PackOutcome()
    members = _TrackedMembers(tracker, outcome, data.n_train_tokens)
    skip: set[str] = set()
    for config in configs:
        finished = finished_result(config, tracker, provenance)
        if finished is not None:
            outcome.results[config.run_key] = finished
            skip.add(config.run_key)
    todo = [c for c in configs if c.run_key not in skip]
    key = pack_key(configs)
    folder = pack_dir(configs)
    try:
        for config in todo:
            claim = Claim(Path(config.run_dir) / config.run_key)
            try:
                claim.acquire()
            except CellBusy as busy:
                print(f"[{config.run_key}] {busy}: skipping")
                outcome.results[config.run_key] = RunResult(
                    config.run_key, "", True, float("nan"), None
                )
                skip.add(config.run_key)
                continue
            members.claims[config.run_key] = claim
        todo = [c for c in todo if c.run_key not in skip]
        if not todo:
            return outcome
        folders = {Path(c.run_dir) / c.run_key: "run folder" for c in todo}
        check_all({**folders, folder: "pack"}, provenance)
        print(
            f"[pack {key}] {len(configs)} cell(s) in {len(lineages)} lineage(s): "
            f"{len(todo)} to train, {len(configs) - len(todo)} finished or busy",
            flush=True,
        )
        trainer = PackedTrainer(lineages, data, folder / "checkpoints", device, members, skip=skip)
        counts = (trainer.n_params, trainer.n_params_total)
        for config in todo:
            if config.run_key not in trainer.done:
                members.open(config, key, counts, provenance)
        trainer.train()
    except (KeyboardInterrupt, SystemExit):  # Ctrl-C, or a requeue after preemption
        members.end_all("KILLED")
        raise
    except BaseException:
        members.end_all("FAILED")  # resumable: a rerun continues from the pack's checkpoint
        raise
    finally:
        members.release_all()
    return outcome


def run_single(config: RunConfig) -> RunResult:
    """One cell with trainer=packed: a pack of one."""
    outcome = run_pack([config])
    if config.run_key in outcome.failures:
        raise TrainingError(outcome.failures[config.run_key])
    return outcome.results[config.run_key]
