"""Where a grid stands: ``python -m qat.status grid=smoke [overrides]`` (``make status``).

Counts the grid's cells as finished / running / queued / failed / new, from MLflow, each cell's
claim and squeue, with a progress bar, and lists the cells that are not finished.
"""

from __future__ import annotations

import sys
from collections import Counter

STATES = ("finished", "running", "queued", "failed", "new")


def grid_status(overrides: list[str]) -> list[tuple[str, str, str]]:
    """(state, run key, cell description) for every unique cell of the grid."""
    from qat.cell_status import cell_status, queued_job_ids
    from qat.grid import expand_grid
    from qat.plan import unique_cells

    live_jobs = queued_job_ids()
    rows = []
    for config in unique_cells(expand_grid(overrides)):
        cell = (
            f"{config.model.name} bits={config.bits:g} qat_frac={config.qat_frac:g} "
            f"tokens={config.tokens} fusion={config.fusion}"
        )
        rows.append((cell_status(config, live_jobs), config.run_key, cell))
    return rows


def main(argv: list[str] | None = None) -> int:
    from tqdm import tqdm

    from qat.errors import QatError
    from qat.grid import cli_overrides

    args = cli_overrides(sys.argv[1:] if argv is None else argv, __doc__)
    if args is None:
        return 0
    try:
        rows = grid_status(args)
    except QatError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
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
