"""`python -m analysis.repro --runs RUNS --out DIR`: the reproduction report of a grid.

From a runs table (`analysis.collect`; seeds, fused cells and FP-only runs welcome, missing cells
tolerated) it writes, all from library code:

- DIR/law.json: the qat law fitted with its Chinchilla part anchored on the FP losses
  (`analysis.anchored_fit`), with cluster-bootstrap 95% intervals and the parameters that hit a
  bound; DIR/residuals.csv;
- DIR/summary.json and DIR/summary.md: fit R² (overall, per bit width, on the held-out largest
  size), the runs' f* per cell with intervals and censoring, its trend with S_total and the
  predictor constant a (`analysis.optima`), seed noise against fraction gaps
  (`analysis.seed_noise`), the tokens fraction 0.1 wastes and fused against classic
  (`analysis.grid_stats`, `analysis.fusion_stats`), best bit width under a memory budget, the
  QAT–FP crossover and the law's trend at the paper's sizes (`analysis.advice`), and what
  repeating the data does (`analysis.repetition`: the train–validation gap against epochs, runs
  on part of the train split against their full-data cells);
- DIR/plots/*.png.

Runs on part of the train split (`train_fraction` < 1) enter the data-repetition section only:
every other statistic, the law's fit first, is of the runs on the whole split.

Every random draw is seeded and the figures carry no timestamps, so the same runs file and
options give the same bytes.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis import plots
from analysis.advice import law_advice
from analysis.anchored_fit import AnchoredFit, fit_anchored
from analysis.collect import read_table
from analysis.errors import AnalysisError
from analysis.fusion_stats import compare_fusion
from analysis.grid_stats import (
    grid_shape,
    held_out,
    qat_rows,
    rank_trend,
    unavailable,
    wasted_compute,
)
from analysis.law import FittedLaw, bits_key
from analysis.optima import CellOptima, cell_optima, optimum_trend, size_pairs, subset
from analysis.predict import law_optima, wasted_tokens_table
from analysis.repetition import repetition
from analysis.report_cli import (
    add_law_fit_options,
    law_fit_kwargs,
    report_main,
    report_parser,
    write_summary,
)
from analysis.repro_md import plain, render_markdown
from analysis.seed_noise import seed_noise

log = logging.getLogger("analysis.repro")
WASTE_FRAC = 0.1
REPRO_RUNS = Path("results/repro/runs.csv")
MINI_RUNS = Path("results/mini/runs.csv")


def default_runs(root: Path = Path(".")) -> Path:
    """The reproduction grid's runs once they exist, else the mini grid's (the low-S end)."""
    return root / (REPRO_RUNS if (root / REPRO_RUNS).is_file() else MINI_RUNS)


def whole_split(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs trained on the whole train split (all of a table without train_fraction)."""
    if "train_fraction" not in runs.columns:
        return runs
    return runs[pd.to_numeric(runs.train_fraction) >= 1.0]


def integer_family(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs of the integer family (and FP): this report's helpers treat every run as one
    format, so float-format runs are left to the formats report (analysis.formats)."""
    if "format" not in runs.columns:
        return runs
    fmt = runs["format"].fillna("int").astype(str)
    return runs[fmt.eq("int") | pd.to_numeric(runs.B).ge(16)]


def repetition_section(runs: pd.DataFrame, seed: int) -> dict[str, Any]:
    """What repeating the data does, from every run of the table."""
    kept_out = len(runs) - len(whole_split(runs))
    return {"part_of_split_runs": kept_out, **repetition(runs, seed=seed)}


def _guard(what: Callable[[], Any]) -> Any:
    """A section of the summary, or `unavailable` with the reason the data cannot give it."""
    try:
        return what()
    except AnalysisError as e:
        return unavailable(str(e))


def fit_section(result: AnchoredFit, runs: pd.DataFrame, **fit_kwargs: Any) -> dict[str, Any]:
    """The anchored law's fit: parameters with intervals, bounds hit, R² overall, per bit width,
    of the FP stage, and on the held-out largest size."""
    law = result.law
    fp_kwargs = {k: v for k, v in fit_kwargs.items() if k != "bootstrap"}
    return {
        "formula": law.law.formula,
        "params": law.params,
        "ci": law.ci,
        "at_bounds": result.at_bounds(),
        "n_points": law.n_points,
        "fp_points": len(result.fp_points),
        "r2": law.r2,
        "r2_by_bits": law.r2_by_bits,
        "fp_r2": result.fp.fitted.r2,
        "held_out": held_out(runs, fitter=lambda t: fit_anchored(t, **fp_kwargs).law),
    }


def optima_section(optima: CellOptima, law: FittedLaw, seed: int) -> dict[str, Any]:
    """The runs' f* per cell (with the law's f* there) and their trend."""
    cells = optima.cells
    at_law = law_optima(law, cells)
    cells = cells.assign(law_f_star=at_law.qat_frac.to_numpy())
    return {
        "noise": optima.noise,
        "noise_source": optima.noise_source,
        "trend": optimum_trend(optima, seed=seed),
        "trend_by_bits": {
            bits_key(b): optimum_trend(subset(optima, optima.cells.B.eq(b)), seed=seed)
            for b in sorted(optima.cells.B.unique())
        },
        "law_trend": rank_trend(at_law.S_total, at_law.qat_frac.round(4)),
        "size_pairs": size_pairs(optima).to_dict("records"),
        "cells": cells.to_dict("records"),
    }


def summarize(
    runs: pd.DataFrame, result: AnchoredFit, source: str, seed: int = 0, **fit_kwargs: Any
) -> dict[str, Any]:
    """Every statistic of the report as one JSON-able dict."""
    law = result.law
    shape = grid_shape(runs)
    optima = cell_optima(runs, seed=seed)
    return {
        "source": source,
        "grid": shape,
        "fit": fit_section(result, runs, seed=seed, **fit_kwargs),
        "optimal_fraction": (
            optima_section(optima, law, seed)
            if len(optima.cells)
            else unavailable("no classic (N, D_total, B) cell has >= 3 fractions")
        ),
        "seed_noise": seed_noise(runs),
        "wasted_compute": _guard(lambda: wasted_compute(runs, law, WASTE_FRAC)),
        "fusion": _guard(lambda: compare_fusion(runs, law)),
        "advice": _guard(lambda: law_advice(law, shape["sizes"], shape["tokens_per_param"])),
    }


def figures(result: AnchoredFit, runs: pd.DataFrame, summary: dict[str, Any]) -> dict[str, Any]:
    """The report's figures by name."""
    law, used = result.law, result.qat.residuals
    figs = {"fit_quality": plots.fit_quality(used)}
    opt = summary["optimal_fraction"]
    if opt.get("available", True):
        a = opt["trend"]["a"]
        a_ci = (a["lo"], a["hi"]) if a["lo"] is not None else None
        cells = pd.DataFrame(opt["cells"])
        figs["optimal_fraction"] = plots.optima_with_intervals(cells, a["value"], a_ci)
    n_ref = float(used.N.max())
    tpp = used.D_total / used.N
    budgets = np.geomspace(float(tpp.min()) * n_ref, float(tpp.max()) * n_ref, 8)
    bits = sorted(used.B.unique())
    figs["wasted_tokens"] = plots.wasted_tokens(
        wasted_tokens_table(law, n_ref, budgets, bits, WASTE_FRAC)
    )
    at_ref = sorted(used.D_total[np.isclose(used.N, n_ref)].unique())[:6]
    classic = qat_rows(runs, False)
    for b in (bits[0], bits[-1]):
        figs[f"loss_vs_fraction_{b:g}bit"] = plots.loss_vs_fraction(law, n_ref, b, at_ref, classic)
    return figs


def run(
    runs_file: Path,
    out: Path,
    *,
    starts: int | None = None,
    fp_starts: int | None = None,
    bootstrap: int = 100,
    seed: int = 0,
    workers: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """The report of `runs_file` into `out`; returns the summary."""
    table = read_table(runs_file)
    every_run = integer_family(table)
    left_out = len(table) - len(every_run)
    if left_out:
        log.info(
            "left out %d runs of float formats: this report compares the integer family; "
            "see make formats-report",
            left_out,
        )
    runs = whole_split(every_run)
    if qat_rows(runs, False).empty:
        raise AnalysisError(
            f"runs file {str(runs_file)!r} has no classic QAT runs (B < 16, D_fp > 0, D_qat > 0, "
            "fusion false); the law is fitted to those"
        )
    kw: dict[str, Any] = {"starts": starts, "fp_starts": fp_starts, "workers": workers}
    result = fit_anchored(runs, bootstrap=bootstrap, seed=seed, progress=progress, **kw)
    source = f"file:{runs_file}"
    summary = summarize(runs, result, source, seed=seed, **kw)
    summary["data_repetition"] = repetition_section(every_run, seed)
    summary = plain(summary)
    out.mkdir(parents=True, exist_ok=True)
    result.law.save(out / "law.json")
    result.qat.residuals.to_csv(out / "residuals.csv", index=False, float_format="%.10g")
    write_summary(out, summary, render_markdown)
    for name, fig in figures(result, runs, summary).items():
        plots.save(fig, out / "plots" / name, formats=("png",))
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    ap = report_parser(
        "python -m analysis.repro",
        "Reproduction report of a grid: anchored law fit with bootstrap intervals, f* with "
        "uncertainty, seed noise, wasted compute, fusion, memory-budget advice.",
    )
    add_law_fit_options(ap, bootstrap=100, bootstrap_help="cluster resamples (default 100)")
    return report_main(ap, argv, lambda a: run(a.runs, a.out, progress=True, **law_fit_kwargs(a)))


if __name__ == "__main__":
    sys.exit(main())
