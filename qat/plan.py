"""Plan a grid's shared FP trunks: ``python -m qat.plan grid=paper [overrides]``.

Prints, per trunk, the cells' branch points and the tokens trained naively (every cell trains
its own FP prefix) against with sharing (each trunk once, then each cell from its branch point).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from qat.config import RunConfig
from qat.schedule import plan_phases
from qat.trunk import TrunkStore, plan_trunks
from qat.units import format_count


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


def main(argv: list[str] | None = None) -> int:
    from qat.errors import QatError
    from qat.grid import cli_overrides, expand_grid

    overrides = cli_overrides(sys.argv[1:] if argv is None else argv, __doc__)
    if overrides is None:
        return 0
    try:
        cells = expand_grid(overrides)
    except QatError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    plans, naive, shared = plan_grid(cells)
    print(f"{len(unique_cells(cells))} cells, {len(plans)} trunk(s)")
    for trunk in plans:
        points = ", ".join(format_count(t) for t in trunk.branch_tokens)
        print(
            f"trunk {trunk.key} ({trunk.model}, {trunk.cells} cells): trained "
            f"{format_count(trunk.naive_tokens)} naive vs {format_count(trunk.shared_tokens)} "
            f"shared; branch points (tokens): {points}"
        )
    saving = 1 - shared / naive if naive else 0.0
    print(
        f"total: {format_count(naive)} tokens naive, {format_count(shared)} with shared trunks "
        f"({saving:.1%} saved)"
    )
    # Every saved token is an FP token: the share of the FP phase that no longer needs training.
    fp_naive = sum(plan_phases(c).tokens_fp for c in unique_cells(cells))
    fp_shared = fp_naive - (naive - shared)
    fp_saving = 1 - fp_shared / fp_naive if fp_naive else 0.0
    print(
        f"FP phase: {format_count(fp_naive)} tokens naive, {format_count(fp_shared)} shared "
        f"({fp_saving:.1%} saved)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
