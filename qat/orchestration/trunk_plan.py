"""A grid's shared FP trunks: which cells branch from which trunk, where, and the tokens that
sharing saves (every cell training its own FP prefix, against each trunk once and then each cell
from its branch point)."""

from __future__ import annotations

from dataclasses import dataclass

from qat.config import RunConfig
from qat.schedule import plan_phases
from qat.store.trunk_store import TrunkStore, plan_trunks


@dataclass(frozen=True)
class TrunkPlan:
    key: str
    model: str
    cells: int
    branch_tokens: list[int]
    naive_tokens: int
    shared_tokens: int


def unique_cells(configs: list[RunConfig]) -> list[RunConfig]:
    """One config per run key (FP-only cells with different qat_frac are one run)."""
    return list({c.run_key: c for c in configs}.values())


def plan_grid(configs: list[RunConfig]) -> tuple[list[TrunkPlan], int, int]:
    """Per-trunk plans and the grid's (naive, shared) trained tokens."""
    cells = unique_cells(configs)
    naive_total = sum(plan_phases(c).tokens_total for c in cells)
    plans = []
    shared_total = naive_total
    for key, members in plan_trunks(cells).items():
        tokens_per_step = plan_phases(members[0][0]).tokens_per_step
        branches = sorted({step * tokens_per_step for _, step in members if step > 0})
        naive = sum(plan_phases(c).tokens_total for c, _ in members)
        shared = (max(branches) if branches else 0) + sum(
            plan_phases(c).tokens_total - max(step, 0) * tokens_per_step for c, step in members
        )
        shared_total -= naive - shared
        plans.append(
            TrunkPlan(key, members[0][0].model.name, len(members), branches, naive, shared)
        )
    return plans, naive_total, shared_total


def register_branch_points(configs: list[RunConfig]) -> None:
    """Tell each trunk store which branch checkpoints the grid needs (kept, never pruned)."""
    for members in plan_trunks(unique_cells(configs)).values():
        TrunkStore(members[0][0]).want(step for _, step in members)
