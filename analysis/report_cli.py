"""What the report commands (`python -m analysis.repro`, `.formats`, `.qat_phase`) share: their
law-fit options, writing summary.json and summary.md, and turning an AnalysisError into one line
and exit status 2."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from analysis.errors import AnalysisError

log = logging.getLogger("analysis.report_cli")


def report_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """A parser with the options every report takes: --runs and --out."""
    ap = argparse.ArgumentParser(prog=prog, description=description)
    ap.add_argument("--runs", required=True, type=Path, help="runs table (.csv/.parquet)")
    ap.add_argument("--out", required=True, type=Path, help="output directory")
    return ap


def add_law_fit_options(ap: argparse.ArgumentParser, bootstrap: int, bootstrap_help: str) -> None:
    """The anchored law fit's options (analysis.anchored_fit.fit_anchored)."""
    ap.add_argument("--starts", type=int, help="qat-law multi-starts (default: the law's own)")
    ap.add_argument("--fp-starts", type=int, help="chinchilla multi-starts (default: its grid)")
    ap.add_argument("--bootstrap", type=int, default=bootstrap, help=bootstrap_help)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, help="processes (default: all CPUs)")


def law_fit_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The options of `add_law_fit_options` as keyword arguments of a report's `run`."""
    return {
        "starts": args.starts,
        "fp_starts": args.fp_starts,
        "bootstrap": args.bootstrap,
        "seed": args.seed,
        "workers": args.workers,
    }


def write_summary(out: Path, summary: dict[str, Any], render: Callable[[dict], str]) -> None:
    """summary.json (the statistics, for code) and summary.md (``render``'s text, for people)."""
    (out / "summary.json").write_text(
        json.dumps(summary, indent=2, ensure_ascii=False, allow_nan=False) + "\n", "utf-8"
    )
    (out / "summary.md").write_text(render(summary), "utf-8")


def report_main(
    ap: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    write: Callable[[argparse.Namespace], object],
) -> int:
    """Parse ``argv``, write the report, and say where: exit 0; an AnalysisError is one line on
    stderr and exit 2."""
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        write(args)
    except AnalysisError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    log.info("wrote %s", args.out / "summary.md")
    return 0
