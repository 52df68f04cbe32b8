"""A grid's progress read from its run store, for the processes that watch cells train
elsewhere (``qat.node_grid``'s workers, SLURM jobs): each cell's ``metrics.jsonl`` says how far it
is and how fast it goes, its claim whether it is running."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from qat.config import RunConfig
from qat.progress import GridCounts
from qat.schedule import plan_phases
from qat.tracking_schema import FINAL_METRIC, TRAIN_SPEED

TAIL_BYTES = 16384  # the end of a metrics.jsonl: its newest records
FRESH_S = 120.0  # a cell that logged within this long is training at its last logged speed
OBSERVED_AFTER_S = 20.0  # from then on, the speed is the one observed while watching


@dataclass(frozen=True)
class CellRecord:
    tokens: int = 0
    finished: bool = False
    tokens_per_s: float | None = None
    updated: float | None = None  # time.time() of the newest record


def read_cell(run_dir: Path) -> CellRecord:
    """How far a cell is, from the newest records of its ``metrics.jsonl``."""
    path = run_dir / "metrics.jsonl"
    try:
        with path.open("rb") as file:
            size = file.seek(0, 2)
            file.seek(max(0, size - TAIL_BYTES))
            tail = file.read().decode("utf-8", "replace")
    except OSError:
        return CellRecord()
    records = []
    for line in tail.splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:  # the first line, cut by the tail, or one being written
            continue
    if not records:
        return CellRecord()
    speeds = [r[TRAIN_SPEED] for r in records if TRAIN_SPEED in r]
    return CellRecord(
        tokens=max(int(r.get("tokens", 0)) for r in records),
        finished=any(FINAL_METRIC in r for r in records),
        tokens_per_s=speeds[-1] if speeds else None,
        updated=records[-1].get("time"),
    )


class GridWatch:
    """The counts of a grid's cells (one per run key), refreshed from the run store.

    The speed is the budget tokens done per second while watching (shared trunks and resumed
    cells included), once that is measured; before, the summed last speeds of the cells that
    are training."""

    def __init__(self, cells: list[RunConfig]) -> None:
        self.cells = list({c.run_key: c for c in cells}.values())
        self.budgets = {c.run_key: plan_phases(c).tokens_total for c in self.cells}
        self._first: tuple[float, int] | None = None

    def counts(self, states: dict[str, str] | None = None) -> GridCounts:
        """``states``: each run key's state as ``qat.status`` finds it (finished, running,
        queued, failed, new); by default from the store (a final loss, a live claim)."""
        from qat.store.claim import Claim

        now = time.time()
        counts = GridCounts(cells=len(self.cells), tokens_total=sum(self.budgets.values()))
        speeds = 0.0
        for config in self.cells:
            key = config.run_key
            run_dir = Path(config.run_dir) / key
            record = read_cell(run_dir)
            state = states.get(key, "new") if states is not None else None
            if state is None:
                state = (
                    "finished"
                    if record.finished
                    else "running"
                    if Claim(run_dir).holder() is not None
                    else "new"
                )
            if state == "finished":
                counts.finished += 1
                counts.tokens_done += self.budgets[key]
                continue
            counts.failed += state == "failed"
            counts.running += state == "running"
            counts.queued += state == "queued"
            counts.tokens_done += min(record.tokens, self.budgets[key])
            fresh = record.updated is not None and now - record.updated < FRESH_S
            if state == "running" and fresh and record.tokens_per_s:
                speeds += record.tokens_per_s
        counts.tokens_per_s = self._speed(now, counts.tokens_done) or speeds or None
        return counts

    def _speed(self, now: float, done: int) -> float | None:
        if self._first is None:
            self._first = (now, done)
            return None
        start, done_then = self._first
        if now - start < OBSERVED_AFTER_S or done <= done_then:
            return None
        return (done - done_then) / (now - start)
