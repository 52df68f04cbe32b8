"""`python -m analysis.qat_phase --runs RUNS --out DIR`: the QAT phase's knobs report of a grid.

From a runs table with the knob columns qat_lr_ratio and qat_reset_moments (`analysis.collect`
of grid=repro-qat-phase, docs/repro.md#the-qat-phases-knobs) it writes, all from library code
(`analysis.qat_phase_stats`):

- DIR/summary.json and DIR/summary.md: per (N, D_total, B) the f* of each variant with a 95%
  interval and the loss there; each variant against the baseline (QAT peak ×1, moments kept):
  the mean shift of f* and of the loss at f* with bootstrap intervals, a sign test over cells,
  and a verdict; per knob, the verdict of the variants that change it alone;
- DIR/plots/loss_vs_fraction.png: loss against fraction per variant, one panel per cell.

Every random draw is seeded and the figure carries no timestamp, so the same runs file and
options give the same bytes. A table without the knob columns, or with one variant only, is
refused with one line and nothing is written.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from analysis import plots, qat_phase_plots
from analysis.collect import read_table
from analysis.errors import AnalysisError
from analysis.law import bits_key
from analysis.qat_phase_stats import (
    BASELINE,
    KNOBS,
    check_variants,
    compare_all,
    knob_verdicts,
    phase_optima,
    phase_rows,
    variant_label,
    variant_order,
)
from analysis.report_cli import report_main, report_parser, write_summary
from analysis.repro_md import num, plain

log = logging.getLogger("analysis.qat_phase")

KNOB_NAMES = {
    "qat_lr_ratio": "the QAT phase's peak learning rate (schedule.qat_lr_ratio)",
    "qat_reset_moments": "resetting Adam's moments at the switch (optim.qat_reset_moments)",
}


def _ci(i: dict[str, Any], fmt: str = "+.3f") -> str:
    if i.get("lo") is None:
        return f"{num(i['value'], fmt)} (no interval)"
    return f"{num(i['value'], fmt)} [{num(i['lo'], fmt)}, {num(i['hi'], fmt)}]"


def render_markdown(s: dict[str, Any]) -> str:
    """The summary as Markdown."""
    lines = [
        "# The QAT phase's knobs",
        "",
        f"Source: `{s['source']}`; {s['runs']} classic QAT runs, variants: "
        + ", ".join(s["variants"])
        + f". Baseline: {s['baseline']}. Noise of a run's loss (relative): "
        f"{num(s['noise']['value'], '.2e')}, from {s['noise']['source']}.",
        "",
        "## Verdicts per knob",
        "",
        "From the variants that change that knob alone, over the (N, D, bits) cells they share "
        "with the baseline; a shift is called only where its 95% bootstrap interval (over cells "
        "and replicates) excludes zero.",
        "",
    ]
    for knob in KNOBS:
        found = s["knobs"][knob]
        if not found:
            lines.append(f"- {KNOB_NAMES[knob]}: no variant changes it alone")
        for v in found:
            lines.append(
                f"- {KNOB_NAMES[knob]}, {v['variant']} ({v['cells']} cells): "
                f"**{v['f_verdict']}**; {v['loss_verdict']}"
            )
    lines += [
        "",
        "## Each variant against the baseline",
        "",
        "| variant | changes | cells | mean shift of f* [95%] | f* larger / smaller / equal "
        "| sign test p | loss at f* vs baseline [95%] | verdict: f* | verdict: loss |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for c in s["comparisons"]:
        if not c["cells"]:
            lines.append(
                f"| {c['variant']} | {', '.join(c['changes'])} | 0 | – | – | – | – "
                f"| {c['f_verdict']} | |"
            )
            continue
        lines.append(
            f"| {c['variant']} | {', '.join(c['changes'])} | {c['cells']} | {_ci(c['f_shift'])} "
            f"| {c['f_larger']} / {c['f_smaller']} / {c['f_equal']} "
            f"| {num(c['sign_test_p'], '.3g')} | {_ci(c['loss_change'], '+.2%')} "
            f"| {c['f_verdict']} | {c['loss_verdict']} |"
        )
    lines += [
        "",
        "## f* per cell and variant",
        "",
        "f* is the grid fraction of lowest loss; its 95% interval from replicates "
        "(seeds resampled, or the curve plus noise); *censored*: f* at the grid's edge.",
        "",
        "| N | D_total | bits | S_total | variant | f* [95%] | censored | loss at f* | method |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for c in s["cells"]:
        lines.append(
            f"| {c['N']:.3g} | {c['D_total']:.3g} | {bits_key(c['B'])} | {c['S_total']:.0f} "
            f"| {c['variant']} | {c['f_star']:.2f} [{c['f_lo']:.2f}, {c['f_hi']:.2f}] "
            f"| {c['censored'] or '–'} | {c['loss_star']:.4f} | {c['method']} |"
        )
    lines += ["", "![loss against fraction](plots/loss_vs_fraction.png)", ""]
    return "\n".join(lines)


def run(runs_file: Path, out: Path, *, seed: int = 0) -> dict[str, Any]:
    """The report of `runs_file` into `out`; returns the summary. Raises AnalysisError (before
    writing anything) when the table cannot compare the QAT phase's variants."""
    source = f"runs file {str(runs_file)!r}"
    rows = phase_rows(read_table(runs_file), source)
    check_variants(rows, source)
    opt = phase_optima(rows, seed=seed)
    if opt.cells.empty:
        raise AnalysisError(f"{source}: no cell has >= 3 QAT fractions; f* needs them")
    variants = variant_order(rows)
    comparisons = compare_all(opt, variants, seed=seed)
    place = {variant_label(*v): k for k, v in enumerate(variants)}
    cells = opt.cells.assign(place=opt.cells.variant.map(place))
    cells = cells.sort_values(["B", "N", "D_total", "place"]).drop(columns="place")
    summary = plain(
        {
            "source": f"file:{runs_file}",
            "runs": len(rows),
            "baseline": variant_label(*BASELINE),
            "variants": [variant_label(*v) for v in variants],
            "noise": {"value": opt.noise, "source": opt.noise_source},
            "knobs": knob_verdicts(comparisons),
            "comparisons": comparisons,
            "cells": cells.to_dict("records"),
        }
    )
    out.mkdir(parents=True, exist_ok=True)
    write_summary(out, summary, render_markdown)
    fig = qat_phase_plots.loss_vs_fraction(rows, opt.cells, summary["variants"])
    plots.save(fig, out / "plots" / "loss_vs_fraction", formats=("png",))
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    ap = report_parser(
        "python -m analysis.qat_phase",
        "The QAT phase's knobs report of a grid: f* and the loss there per variant (QAT peak "
        "learning rate, Adam's moments kept or reset), each against the baseline.",
    )
    ap.add_argument("--seed", type=int, default=0, help="seed of the replicates and bootstrap")
    return report_main(ap, argv, lambda a: run(a.runs, a.out, seed=a.seed))


if __name__ == "__main__":
    sys.exit(main())
