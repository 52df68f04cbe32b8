"""Where a grid stands: ``python -m qat.status grid=smoke [overrides]`` (``make status``).

Counts the grid's cells as finished / running / queued / failed / new, from MLflow, each cell's
claim and squeue, with a progress bar, and lists the cells that are not finished.
"""

from __future__ import annotations

import sys
from collections import Counter

STATES = ("finished", "running", "queued", "failed", "new")


def main(argv: list[str] | None = None) -> int:
    from tqdm import tqdm

    from qat.errors import QatError, report
    from qat.orchestration.cell_status import grid_status
    from qat.orchestration.grid import cli_overrides

    args = cli_overrides(sys.argv[1:] if argv is None else argv, __doc__)
    if args is None:
        return 0
    try:
        rows = grid_status(args)
    except QatError as error:
        return report(error)
    counts = Counter(state for state, _, _ in rows)
    tqdm(
        total=len(rows),
        initial=counts["finished"],
        desc="finished",
        unit="cell",
        file=sys.stdout,
        ncols=80,
        bar_format="{desc}: {bar} {n_fmt}/{total_fmt} cells",
    ).close()
    print("  ".join(f"{state}: {counts[state]}" for state in STATES))
    for state, key, cell in sorted(rows):
        if state != "finished":
            print(f"  {state:8s} {key}  {cell}")
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
