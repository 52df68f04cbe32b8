"""Where a grid stands: ``python -m qat.status grid=smoke [overrides]`` (``make status``).

Counts the grid's cells as finished / running / queued / failed / new, from MLflow, each cell's
claim and squeue (without SLURM: MLflow and the claims), the tokens done of the grid's budget
(each cell's metrics.jsonl in the run folder) with the speed and an ETA, and lists the cells that
are not finished. ``--watch`` refreshes the view every ``--every`` seconds until every cell has
finished or failed (or Ctrl-C, or ``--iterations`` views).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from typing import Any

STATES = ("finished", "running", "queued", "failed", "new")
CLEAR = "\x1b[H\x1b[2J"  # cursor home, clear the screen: a refreshing view on a terminal


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m qat.status",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for train.py -m")
    parser.add_argument("-m", "--multirun", action="store_true", help="accepted, as train.py's")
    parser.add_argument("--watch", action="store_true", help="refresh until the grid has ended")
    parser.add_argument("--every", type=float, default=10.0, help="seconds between views")
    parser.add_argument("--iterations", type=int, default=0, help="stop after N views (0: no)")
    args = parser.parse_intermixed_args(sys.argv[1:] if argv is None else argv)
    if args.every <= 0 or args.iterations < 0:
        parser.error("--every must be > 0 and --iterations >= 0")

    from qat.errors import QatError

    try:
        return _report(args.overrides, args.watch, args.every, args.iterations)
    except QatError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def _report(overrides: list[str], watch: bool, every: float, iterations: int) -> int:
    from qat.orchestration.grid import expand_grid
    from qat.orchestration.grid_watch import GridWatch
    from qat.orchestration.node_workers import sweep_params

    grid = GridWatch(expand_grid(overrides))
    swept = [key for key, values in sweep_params(overrides).items() if len(values) > 1]
    interactive = sys.stdout.isatty()
    views = 0
    try:
        while True:
            rows, counts = _states(grid)
            views += 1
            ended = counts.ended == counts.cells
            last = not watch or ended or views == iterations
            if watch and not interactive and not last:  # a log: one line per view
                print(f"{time.strftime('%H:%M:%S')} {_counts_line(rows)}  {_tokens_line(counts)}")
            else:
                print(
                    (CLEAR if watch and interactive else "") + _view(rows, counts, swept),
                    flush=True,
                )
            if last:
                break
            time.sleep(every)
    except KeyboardInterrupt:  # the way out of --watch
        print()
    return 1 if counts.failed else 0


def _states(grid: Any) -> tuple[list[tuple[str, Any]], Any]:
    """Each cell's state, and the grid's counts with its tokens."""
    from qat.orchestration.cell_status import grid_status

    rows = grid_status(grid.cells)
    return rows, grid.counts({config.run_key: state for state, config in rows})


def _counts_line(rows: list[tuple[str, Any]]) -> str:
    counts = Counter(state for state, _ in rows)
    return "  ".join(f"{state}: {counts[state]}" for state in STATES)


def _tokens_line(counts: Any) -> str:
    return counts.tokens_text()


def _view(rows: list[tuple[str, Any]], counts: Any, swept: list[str]) -> str:
    from tqdm import tqdm

    from qat.progress import cell_label

    bar = tqdm.format_meter(
        counts.finished,
        max(counts.cells, 1),
        0,
        ncols=80,
        prefix="finished",
        bar_format="{desc}: {bar} {n_fmt}/{total_fmt} cells",
    )
    lines = [bar, _counts_line(rows), _tokens_line(counts)]
    for state, config in sorted(rows, key=lambda row: (row[0], row[1].run_key)):
        if state != "finished":
            lines.append(f"  {state:8s} {config.run_key}  {cell_label(config, swept)}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
