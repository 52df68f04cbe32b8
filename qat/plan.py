"""Plan a grid's shared FP trunks: ``python -m qat.plan grid=paper [overrides]``.

Prints, per trunk, the cells' branch points and the tokens trained naively (every cell trains
its own FP prefix) against with sharing (each trunk once, then each cell from its branch point).
"""

from __future__ import annotations

import sys

from qat.errors import QatError, report
from qat.orchestration.grid import cli_overrides, expand_grid
from qat.orchestration.trunk_plan import plan_grid, unique_cells
from qat.schedule import plan_phases
from qat.units import format_count


def main(argv: list[str] | None = None) -> int:
    overrides = cli_overrides(sys.argv[1:] if argv is None else argv, __doc__)
    if overrides is None:
        return 0
    try:
        cells = expand_grid(overrides)
    except QatError as error:
        return report(error)
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
