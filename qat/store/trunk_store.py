"""Shared full-precision trunks.

With a warmup-stable-decay schedule, a cell's training up to its branch point (where its learning
rate leaves the stable phase: the start of the FP cooldown, or the QAT switch when fused) does
not depend on bits, qat_frac or the budget. Every cell with the same model, data, optimizer,
warmup and seed can therefore start from one trunk checkpoint at its branch point instead of
training that prefix itself.

Store layout: ``<run_dir>/trunks/<trunk key>/`` with ``checkpoints/<tokens>/`` (the same atomic
checkpoints as runs), ``wanted.json`` (the branch steps the grid needs: each gets a checkpoint
that is never pruned), ``metrics.jsonl`` and a lock file. One process extends a trunk at a time;
others wait on the lock and then find their checkpoint written. The store only keeps and
plans: whoever needs a trunk extended hands :meth:`TrunkStore.ensure` the function that trains it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from pathlib import Path

from qat.checkpoint import Checkpoint, list_checkpoints
from qat.config import RunConfig
from qat.locks import file_lock
from qat.trunk import branch_step, trunk_key


class TrunkStore:
    def __init__(self, config: RunConfig) -> None:
        self.key = trunk_key(config)
        self.tokens_per_step = config.data.batch_size * config.data.seq_len
        self.dir = Path(config.run_dir) / "trunks" / self.key
        self.checkpoint_dir = self.dir / "checkpoints"

    def checkpoint_at(self, step: int) -> Checkpoint | None:
        tokens = step * self.tokens_per_step
        return next((c for c in list_checkpoints(self.checkpoint_dir) if c.tokens == tokens), None)

    def latest_before(self, step: int) -> Checkpoint | None:
        tokens = step * self.tokens_per_step
        earlier = [c for c in list_checkpoints(self.checkpoint_dir) if c.tokens < tokens]
        return earlier[-1] if earlier else None

    def wanted(self) -> set[int]:
        path = self.dir / "wanted.json"
        return set(json.loads(path.read_text())) if path.exists() else set()

    def want(self, steps: Iterable[int]) -> None:
        with self.locked():
            self._add_wanted(steps)

    def _add_wanted(self, steps: Iterable[int]) -> None:
        wanted = self.wanted() | {int(s) for s in steps if s > 0}
        tmp = self.dir / "wanted.json.tmp"
        tmp.write_text(json.dumps(sorted(wanted)))
        tmp.replace(self.dir / "wanted.json")

    def locked(self) -> AbstractContextManager[None]:
        return file_lock(self.dir / "lock")

    def ensure(self, step: int, extend: Callable[[TrunkStore, int], None]) -> Checkpoint:
        """The trunk checkpoint at ``step``; if missing, ``extend(store, step)`` trains the trunk
        up to it (under the trunk's lock, with ``step`` registered as wanted)."""
        with self.locked():
            found = self.checkpoint_at(step)
            if found is not None:
                return found
            self._add_wanted([step])
            extend(self, step)
            found = self.checkpoint_at(step)
            assert found is not None, f"trunk {self.key} did not save step {step}"
            return found

    def metrics_until(self, tokens: int) -> list[dict]:
        """The trunk's logged training metrics up to ``tokens`` (one record per token count)."""
        path = self.dir / "metrics.jsonl"
        if not path.exists():
            return []
        records: dict[int, dict] = {}
        for line in path.read_text().splitlines():
            record = json.loads(line)
            if record["tokens"] <= tokens:
                records[record["tokens"]] = record  # a resumed segment overwrites its repeat
        return [records[t] for t in sorted(records)]


def plan_trunks(configs: list[RunConfig]) -> dict[str, list[tuple[RunConfig, int]]]:
    """Cells grouped by trunk key, each with its branch step (cells with trunk=off excluded)."""
    groups: dict[str, list[tuple[RunConfig, int]]] = {}
    for config in configs:
        if config.trunk != "share":
            continue
        groups.setdefault(trunk_key(config), []).append((config, branch_step(config)))
    return groups
