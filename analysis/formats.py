"""`python -m analysis.formats --runs RUNS --out DIR`: the number formats report of a grid.

From a runs table (`analysis.collect`, with its `format` column; the formats grid of
docs/formats.md#the-formats-grid) it writes, all from library code (`analysis.format_stats`):

- DIR/summary.json and DIR/summary.md: per (N, D_total, format) the runs' f* with a 95% interval
  and the loss there; each pair of formats of one element width compared at the same N and
  D_total (loss at f*, and whether f* differs: a paired bootstrap over cells and a sign test);
  the winner of each cell; the same formats compared through the law at equal weight memory and
  training compute (how formats of different bits per weight are compared);
- DIR/law.json: the qat law with a factor per format (`Law.with_formats`), its Chinchilla part
  anchored on the FP losses (`analysis.anchored_fit`), and its R² per format;
- DIR/plots/*.png: loss against fraction per format at each (N, D_total), f* per format against
  S_total, loss at f* against bits per weight.

Every random draw is seeded and the figures carry no timestamps, so the same runs file and
options give the same bytes. A table without float-format runs, or with a single format, is
refused with one line.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from analysis import formats_plots, plots
from analysis.anchored_fit import AnchoredFit, fit_anchored
from analysis.collect import prepare, read_table
from analysis.errors import AnalysisError
from analysis.fit import r2_score
from analysis.format_stats import (
    check_formats,
    compare_pair,
    equal_memory,
    format_label,
    format_optima,
    format_pairs,
    format_rows,
    label_order,
    law_f_stars,
    winners,
)
from analysis.formats_md import render_markdown
from analysis.grid_stats import unavailable
from analysis.law import FP_BITS
from analysis.optima import CellOptima
from analysis.report_cli import (
    add_law_fit_options,
    law_fit_kwargs,
    report_main,
    report_parser,
    write_summary,
)
from analysis.repro_md import plain

log = logging.getLogger("analysis.formats")


def grid_section(runs: pd.DataFrame, rows: pd.DataFrame) -> dict[str, Any]:
    """What the table holds: runs per format, the axes of the classic QAT cells."""
    order = label_order(rows)
    per = rows.groupby("label")
    formats = [
        {
            "label": lab,
            "format": per.get_group(lab)["format"].iloc[0],
            "B": float(per.get_group(lab).B.iloc[0]),
            "width": float(per.get_group(lab).width.iloc[0]),
            "runs": len(per.get_group(lab)),
        }
        for lab in order
    ]

    def axis(values: pd.Series, digits: int = 4) -> list[float]:
        return sorted({float(f"{v:.{digits}g}") for v in values})

    return {
        "runs": len(runs),
        "classic_qat": len(rows),
        "fp_only": int((runs.B >= FP_BITS).sum()),
        "formats": formats,
        "sizes": axis(rows.N),
        "tokens_per_param": axis(rows.D_total / rows.N, 3),
        "fractions": axis(rows.frac),
    }


def law_section(result: AnchoredFit) -> dict[str, Any]:
    """The format law: parameters (format factors apart) with intervals, R² overall, per format
    label and per bit width, the parameters at a bound."""
    law = result.law
    used = result.qat.residuals
    labels = [format_label(f, b) for f, b in zip(used["format"], used.B, strict=True)]
    by_label = {
        lab: r2_score(g.loss, g.predicted) for lab, g in used.assign(label=labels).groupby("label")
    }
    factors = set(law.law.factor_names)
    ci = law.ci or {}
    return {
        "formula": law.law.formula,
        "formats": list(law.law.formats),
        "params": {k: v for k, v in law.params.items() if k not in factors},
        "factors": {k: v for k, v in law.params.items() if k in factors},
        "ci": {k: list(v) for k, v in ci.items()},
        "at_bounds": result.at_bounds(),
        "n_points": law.n_points,
        "fp_points": len(result.fp_points),
        "fp_r2": result.fp.fitted.r2,
        "r2": law.r2,
        "r2_by_format": law.settings.get("r2_by_format", {}),
        "r2_by_label": by_label,
        "r2_by_bits": law.r2_by_bits,
        "bootstrap": law.settings.get("bootstrap", 0),
    }


def summarize(
    runs: pd.DataFrame,
    rows: pd.DataFrame,
    opt: CellOptima,
    result: AnchoredFit | None,
    why_no_law: str,
    source: str,
    seed: int = 0,
) -> dict[str, Any]:
    """Every statistic of the report as one JSON-able dict."""
    cells = opt.cells
    if result is not None:
        cells = cells.assign(law_f_star=law_f_stars(result.law, cells))
    return {
        "source": source,
        "grid": grid_section(runs, rows),
        "noise": {"value": opt.noise, "source": opt.noise_source},
        "cells": cells.to_dict("records"),
        "comparisons": [compare_pair(opt, a, b, seed=seed) for a, b in format_pairs(opt)],
        "winners": winners(opt),
        "law": law_section(result) if result is not None else unavailable(why_no_law),
        "equal_memory": (
            equal_memory(result.law, opt) if result is not None else unavailable(why_no_law)
        ),
    }


def figures(rows: pd.DataFrame, opt: CellOptima) -> dict[str, Any]:
    """The report's figures by name."""
    cells = opt.cells
    order = label_order(rows)
    figs = {
        "f_star_vs_s": formats_plots.f_star_vs_s(cells, order),
        "loss_vs_bits": formats_plots.loss_vs_bits(cells, order),
    }
    for n, d in sorted(set(zip(cells.N, cells.D_total, strict=True))):
        # No "." in a name: `plots.save` takes what follows one as the file's suffix.
        name = f"loss_vs_fraction_N{n:.3g}_D{d:.3g}".replace("+", "").replace(".", "p")
        figs[name] = formats_plots.loss_vs_fraction(rows, cells, n, d, order)
    return figs


def run(
    runs_file: Path,
    out: Path,
    *,
    starts: int | None = None,
    fp_starts: int | None = None,
    bootstrap: int = 0,
    seed: int = 0,
    workers: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """The report of `runs_file` into `out`; returns the summary. Raises AnalysisError (before
    writing anything) when the table cannot compare formats."""
    runs = prepare(read_table(runs_file))
    rows = format_rows(runs)
    source = f"file:{runs_file}"
    check_formats(rows, f"runs file {str(runs_file)!r}")
    opt = format_optima(rows, seed=seed)
    if opt.cells.empty:
        raise AnalysisError(
            f"runs file {str(runs_file)!r}: no (N, D_total, format) cell has >= 3 QAT fractions; "
            "f* needs them"
        )
    result: AnchoredFit | None = None
    why = ""
    try:
        result = fit_anchored(
            runs,
            starts=starts,
            fp_starts=fp_starts,
            bootstrap=bootstrap,
            seed=seed,
            workers=workers,
            progress=progress,
        )
    except AnalysisError as e:  # the runs' statistics stand without the law
        why = f"the format law could not be fitted: {e}"
        log.warning("%s", why)
    summary = plain(summarize(runs, rows, opt, result, why, source, seed=seed))
    out.mkdir(parents=True, exist_ok=True)
    if result is not None:
        result.law.save(out / "law.json")
    write_summary(out, summary, render_markdown)
    for name, fig in figures(rows, opt).items():
        plots.save(fig, out / "plots" / name, formats=("png",))
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    ap = report_parser(
        "python -m analysis.formats",
        "Number formats report of a grid: f* and the loss there per format, formats compared at "
        "equal element bits and at equal memory, the law with format factors.",
    )
    add_law_fit_options(ap, bootstrap=0, bootstrap_help="law resamples (default 0: none)")
    return report_main(ap, argv, lambda a: run(a.runs, a.out, progress=True, **law_fit_kwargs(a)))


if __name__ == "__main__":
    sys.exit(main())
