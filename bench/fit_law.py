"""Benchmark of law fitting: wall time of `analysis.fit.fit` on two cores.

    python bench/fit_law.py [--repeats 3] [--cores 2] [--out bench/results/fit_law.json]

Cases (each with its wall-time target):
- chinchilla: the 245 points of Epoch AI's extraction of Hoffmann et al.'s data
  (tests/analysis/data/chinchilla_svg_extracted_data.csv), the 4,500-start grid; target <= 10 s.
- qat: 800 synthetic points (5 sizes x 4 bit widths x 5 budgets x 8 fractions, 0.2% noise),
  the law's default 1,000 Latin-hypercube starts; target <= 60 s.

Prints a table and writes JSON. Wall times include starting the worker processes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the project need not be installed to run its benches

from analysis.fit import fit  # noqa: E402
from analysis.synthetic import qat_grid  # noqa: E402

CHINCHILLA_CSV = REPO / "tests" / "analysis" / "data" / "chinchilla_svg_extracted_data.csv"


def chinchilla_runs() -> pd.DataFrame:
    raw = pd.read_csv(CHINCHILLA_CSV)
    n = raw["Model Size"]
    d = raw["Training FLOP"] / (6 * n)
    return pd.DataFrame({"N": n, "D_fp": d, "D_qat": 0.0, "B": 16.0, "loss": raw["loss"]})


def qat_runs() -> pd.DataFrame:
    return qat_grid(
        sizes=(5e7, 1e8, 2e8, 4e8, 8e8),
        fractions=(0.05, 0.1, 0.2, 0.3, 0.45, 0.6, 0.7, 0.8),
        fp_rows=False,
        seed=0,
    )


CASES = {
    "chinchilla": (chinchilla_runs, 10.0),
    "qat": (qat_runs, 60.0),
}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cores", type=int, default=2, help="pin to this many cores (and workers)")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "fit_law.json")
    args = ap.parse_args()
    cores = sorted(os.sched_getaffinity(0))[: args.cores]
    os.sched_setaffinity(0, cores)  # worker processes inherit the affinity

    results = []
    print(
        f"{'law':<11} {'points':>6} {'starts':>6} {'best s':>7} {'median s':>8} {'target s':>8} "
        f"{'R²':>8}  ok"
    )
    for law, (make, target) in CASES.items():
        runs = make()
        times, fitted = [], None
        load_before = os.getloadavg()[0]
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            fitted = fit(runs, law, workers=len(cores)).fitted
            times.append(time.perf_counter() - t0)
        row = {
            "law": law,
            "points": fitted.n_points,
            "starts": fitted.settings["starts"],
            "best_s": min(times),
            "median_s": statistics.median(times),
            "times_s": times,
            "target_s": target,
            "ok": min(times) <= target,
            "r2": fitted.r2,
            "polished_at_best": fitted.settings["polished_at_best"],
            "load_avg_1min_before": load_before,
        }
        results.append(row)
        print(
            f"{law:<11} {row['points']:>6} {row['starts']:>6} {row['best_s']:>7.2f} "
            f"{row['median_s']:>8.2f} {target:>8.0f} {row['r2']:>8.5f}  {row['ok']}"
        )

    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python bench/fit_law.py " + " ".join(sys.argv[1:]),
        "machine": {
            "cpu": cpu_model(),
            "cores_used": len(cores),
            "cpus_visible": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "load_avg_1min_end": os.getloadavg()[0],
        },
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
