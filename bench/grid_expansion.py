"""Grid expansion: every cell's config, from one compose per set of group choices (what
`qat.plan`, `qat.status`, multiruns and the SLURM launcher use) against a Hydra compose per cell.

    python bench/grid_expansion.py grid=paper --out bench/results/grid_expansion.json

Both sides run in this process, one after the other. The per-cell side composes ``--sample``
cells (all by default) and is also reported per cell, so a sample gives the whole grid's time.
"""

from __future__ import annotations

import argparse
import time

from record import write_record

from qat.orchestration.grid import compose_each_cell, expand_grid


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="+", help="the sweep, as for qat.plan")
    parser.add_argument("--sample", type=int, default=None, help="cells composed one by one")
    parser.add_argument("--out", default="bench/results/grid_expansion.json")
    args = parser.parse_args(argv)
    if args.sample is not None and args.sample < 1:
        parser.error("--sample must be >= 1")

    start = time.perf_counter()
    configs = expand_grid(args.overrides)
    fast_s = time.perf_counter() - start
    start = time.perf_counter()
    count, reference = compose_each_cell(args.overrides, args.sample)
    each_s = time.perf_counter() - start
    same = all(configs[i] == config for i, config in reference.items())
    per_cell_whole_s = each_s / len(reference) * count
    print(f"{count} cells; same configs on the {len(reference)} compared: {same}")
    print(f"one compose per group choice: {fast_s:.2f} s ({fast_s / count * 1e3:.1f} ms a cell)")
    print(
        f"a compose per cell: {each_s:.2f} s for {len(reference)} cells "
        f"({each_s / len(reference) * 1e3:.0f} ms a cell; {per_cell_whole_s:.0f} s for all)"
    )
    write_record(
        args.out,
        overrides=args.overrides,
        cells=count,
        compared=len(reference),
        same=same,
        grouped_s=fast_s,
        per_cell_s=each_s,
        per_cell_whole_grid_s=per_cell_whole_s,
        speedup=per_cell_whole_s / fast_s,
    )
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
