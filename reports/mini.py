"""`python -m reports.mini RUNS --out DIR`: the mini-reproduction's summary of a grid.

From a grid's runs table (`analysis.collect`: classic cells, fused cells and FP-only baselines)
it writes DIR/summary.json and DIR/summary.md with, all computed from the data by
`analysis.grid_stats` and `analysis.fusion_stats`:

1. the qat law fitted to the classic cells: R² overall and per bit width, and held out: refit
   without the largest model and predict that model's cells (R², mean relative error);
2. the runs' optimal QAT fraction per (N, D_total, B), the predictor constant a of
   f̂(S) = exp(−a / ln S) against the paper's 6.7297, and whether f* grows with S_total
   (Spearman rank correlation over the cells);
3. the compute wasted by QAT fraction 0.1 against the optimum, per bit width, in % of tokens:
   from the law, and from the runs' loss gap converted to tokens at the law's exchange rate;
4. fused against classic at matched cells (same N, D_total, B, fraction): mean loss difference,
   cells where fused wins, and whether that agrees with the paper (fusion is at least as good).

It also writes the law's files (law.json, residuals.csv, plots/, law.md) through
`analysis.fit_law.fit_and_report`: the same files, byte for byte, as
`make fit-law CSV=RUNS LAW_OUT=DIR`.

    python -m reports.mini results/mini/runs.csv --out results/mini [--starts N] [--workers N]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.collect import read_table
from analysis.errors import AnalysisError
from analysis.fit import FitResult
from analysis.fit_law import REPORT_NAME, fit_and_report
from analysis.fusion_stats import compare_fusion
from analysis.grid_stats import (
    fit_quality,
    grid_shape,
    held_out,
    optimal_fractions,
    qat_rows,
    wasted_compute,
)
from analysis.law import bits_key
from analysis.predict import PAPER_A, predicted_fraction
from analysis.repro import integer_family
from analysis.repro_md import num, plain, table

log = logging.getLogger("reports.mini")


def summarize(
    runs: pd.DataFrame, result: FitResult, source: str, **fit_kwargs: Any
) -> dict[str, Any]:
    """Every statistic of the summary, as one dict; `result` is the qat law's fit to `runs`,
    `fit_kwargs` go to the held-out refit."""
    fitted = result.fitted
    return {
        "source": source,
        "grid": grid_shape(runs),
        "fit": fit_quality(result),
        "held_out": held_out(runs, **fit_kwargs),
        "optimal_fraction": optimal_fractions(runs, fitted),
        "wasted_compute": wasted_compute(runs, fitted),
        "fusion": compare_fusion(runs, fitted),
    }


def _pct(v: Any) -> str:
    return num(None if v is None else 100 * v, ".3f")


def _md_fit(s: dict) -> list[str]:
    f, h = s["fit"], s["held_out"]
    lines = [
        "## 1. Law fit (classic cells)",
        "",
        f"- {f['n_points']} classic QAT cells fitted; R² = {num(f['r2'], '.5f')}, mean relative "
        f"error {_pct(f['mean_rel_error'])}% (max {_pct(f['max_rel_error'])}%)",
        f"- dropped: {f['dropped_rows'] or 'none'}",
        "",
        *table(["bits", "R²"], [[k, num(v, ".5f")] for k, v in f["r2_by_bits"].items()]),
    ]
    if not h["available"]:
        return [*lines, f"Held out: not available ({h['why']}).", ""]
    lines += [
        f"Held out: refit without N = {h['held_out_N']:.4g} ({h['train_points']} cells, "
        f"R² = {num(h['train_r2'], '.5f')}), predicting its {h['test_points']} cells: "
        f"R² = {num(h['r2'], '.5f')}, mean relative error "
        f"{_pct(h['mean_rel_error'])}% (max {_pct(h['max_rel_error'])}%).",
        "",
        *table(
            ["bits", "held-out R²", "mean rel. error (%)"],
            [
                [k, num(v["r2"], ".4f"), num(100 * v["mean_rel_error"], ".3f")]
                for k, v in h["by_bits"].items()
            ],
        ),
    ]
    return lines


def _trend_text(t: dict) -> str:
    if t["rho"] is None:
        return f"undetermined ({t['why']})"
    return (
        f"{t['direction']} (Spearman ρ = {t['rho']:+.3f}, p = {t['p_value']:.2g}, {t['n']} cells)"
    )


def _md_fraction(s: dict) -> list[str]:
    o = s["optimal_fraction"]
    lines = ["## 2. Optimal QAT fraction", ""]
    if not o["available"]:
        return [*lines, f"Not available: {o['why']}.", ""]
    for key, what in (
        ("predictor_runs", "runs' best fractions"),
        ("predictor_law", "law's optima"),
    ):
        p = o[key]
        if p["a"] is None:
            lines.append(f"- a from the {what}: not available ({p['why']})")
        else:
            lines.append(
                f"- a from the {what} ({p['n']} cells): **{p['a']:.4f}** vs the paper's "
                f"{o['paper_a']} (ratio {p['a_over_paper']:.3f}); MAE {p['mae']:.4f} "
                f"(paper's a: {p['paper_mae']:.4f})"
            )
    lines += [
        f"- f* against S_total = D/(N·B/8), runs: {_trend_text(o['trend_runs'])}",
        f"- f* against S_total, law: {_trend_text(o['trend_law'])}",
        "- runs, per bit width: "
        + "; ".join(
            f"{k}-bit {t['direction']}"
            + (f" (ρ = {t['rho']:+.2f}, n = {t['n']})" if t["rho"] is not None else "")
            for k, t in o["trend_runs_by_bits"].items()
        ),
        "",
    ]
    rows = [
        [
            f"{c['N']:.3g}",
            f"{c['D_total']:.3g}",
            bits_key(c["B"]),
            f"{c['S_total']:.0f}",
            f"{c['qat_frac']:.3g}",
            f"{c['law_frac']:.3f}",
            f"{predicted_fraction(c['S_total']):.3f}" if c["S_total"] > 1 else "–",
        ]
        for c in o["cells"]
    ]
    return [
        *lines,
        *table(
            ["N", "D_total", "bits", "S_total", "f* runs", "f* law", f"f̂(S), a = {PAPER_A}"], rows
        ),
    ]


def _md_waste(s: dict) -> list[str]:
    w = s["wasted_compute"]
    f = w["frac"]
    lines = [
        f"## 3. Wasted compute of QAT fraction {f:g}",
        "",
        f"Extra tokens (% of D_total) that fraction {f:g} needs to match the optimum's loss. Law: "
        "the fitted law's optimum over every classic cell. Runs: the loss gap between the run at "
        f"{f:g} and the cell's best run, converted to tokens at the law's exchange rate (biased "
        "up by run-to-run noise: the best of several noisy runs is too low).",
        "",
    ]
    if w["note"]:
        lines += [f"Runs: {w['note']}.", ""]
    rows = [
        [
            k,
            str(e["cells"]),
            num(e.get("law_optimal_frac_mean"), ".3f"),
            f"{num(e.get('law_wasted_pct_mean'), '.2f')} "
            f"[{num(e.get('law_wasted_pct_min'), '.2f')}, "
            f"{num(e.get('law_wasted_pct_max'), '.2f')}]",
            str(e["runs_cells"]),
            num(e.get("runs_gap_mean"), ".4f"),
            num(e.get("runs_gap_pct_mean"), ".3f"),
            num(e.get("runs_wasted_pct_mean"), ".2f"),
            str(e.get("runs_frac_is_best", "–")),
        ]
        for k, e in w["by_bits"].items()
    ]
    header = [
        "bits",
        "cells",
        "law f* (mean)",
        "law waste % (mean [min, max])",
        f"cells with runs at {f:g}",
        "runs' gap (nats)",
        "runs' gap (% of loss)",
        "runs' waste %",
        f"cells where {f:g} is best",
    ]
    return [*lines, *table(header, rows)]


def _md_fusion(s: dict) -> list[str]:
    u = s["fusion"]
    lines = ["## 4. Fused vs classic", ""]
    if not u["available"]:
        return [*lines, f"Not available: {u['why']}.", ""]
    lines += [
        f"Claim (paper): {u['claim']}. Matched cells share N, D_total, B and the QAT fraction; "
        "diff = fused − classic loss (negative: fused better); verdict at 2 standard errors; "
        "tokens saved: extra tokens the classic pipeline needs, by the law, to reach the fused "
        "loss.",
        "",
    ]
    rows = [
        [
            k,
            str(e["cells"]),
            f"{e['mean_diff']:+.4f}",
            num(e["std_err"], ".4f"),
            f"{e['mean_rel_diff_pct']:+.3f}",
            f"{e['fused_wins']}/{e['cells']}",
            num(e["tokens_saved_pct_mean"], "+.2f"),
            e["verdict"],
            "yes" if e["matches_paper"] else "no",
        ]
        for k, e in [*u["by_bits"].items(), ("all", u["overall"])]
    ]
    header = [
        "bits",
        "cells",
        "mean diff (nats)",
        "std. err.",
        "mean diff (%)",
        "fused wins",
        "tokens saved (%)",
        "verdict",
        "matches paper",
    ]
    return [*lines, *table(header, rows)]


def render_markdown(s: dict) -> str:
    """summary.md from the summary dict."""
    g = s["grid"]
    lines = [
        "# Mini-reproduction summary",
        "",
        f"- source: {s['source']}",
        f"- runs: {g['runs']} ({g['classic_qat']} classic QAT, {g['fused_qat']} fused QAT, "
        f"{g['fp_only']} FP-only)",
        f"- sizes N: {', '.join(f'{n:.3g}' for n in g['sizes'])}; bits: "
        f"{', '.join(bits_key(b) for b in g['bits'])}; tokens per parameter D_total/N: "
        f"{', '.join(f'{r:g}' for r in g['tokens_per_param'])} "
        f"({len(g['budgets'])} budgets D_total)",
        f"- fractions: classic {g['fractions_classic']}, fused {g['fractions_fused']}",
        "",
        *_md_fit(s),
        *_md_fraction(s),
        *_md_waste(s),
        *_md_fusion(s),
        "## Files",
        "",
        f"summary.json, law.json, residuals.csv, {REPORT_NAME} (the fit's report), plots/*.png|pdf "
        "(optimal_fraction, wasted_tokens, iso_loss, loss_vs_fraction, best_bits, fit_quality)",
        "",
    ]
    return "\n".join(lines)


def write_summary(summary: dict, out: Path) -> list[Path]:
    """DIR/summary.json and DIR/summary.md."""
    out.mkdir(parents=True, exist_ok=True)
    data = plain(summary)
    js = out / "summary.json"
    js.write_text(json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False) + "\n", "utf-8")
    md = out / "summary.md"
    md.write_text(render_markdown(data), "utf-8")
    return [js, md]


def run(runs_file: Path, out: Path, progress: bool = False, **fit_kwargs: Any) -> dict[str, Any]:
    """The mini report of a runs file into `out`: the law's files and the summary; returns the
    summary."""
    table = read_table(runs_file)
    runs = integer_family(table)
    if left_out := len(table) - len(runs):
        log.info(
            "left out %d runs of float formats: this report compares the integer family; "
            "see make formats-report",
            left_out,
        )
    if qat_rows(runs, False).empty:
        raise AnalysisError(
            f"runs file {str(runs_file)!r} has no classic QAT runs (B < 16, D_fp > 0, D_qat > 0, "
            "fusion false); the law is fitted to those"
        )
    source = f"file:{runs_file}"
    result = fit_and_report(runs, source, out, "qat", progress=progress, **fit_kwargs)
    summary = summarize(runs, result, source, **fit_kwargs)
    write_summary(summary, out)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m reports.mini",
        description="Mini-reproduction summary of a grid: law fit, held-out, optimal fraction, "
        "wasted compute, fusion.",
    )
    ap.add_argument(
        "runs", type=Path, help="runs table (.csv/.parquet), e.g. from analysis.collect"
    )
    ap.add_argument("--out", required=True, type=Path, help="output directory")
    ap.add_argument("--starts", type=int, help="multi-start count (default: the law's own)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, help="processes (default: all CPUs)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    kwargs: dict[str, Any] = {"starts": args.starts, "seed": args.seed, "workers": args.workers}
    try:
        run(args.runs, args.out, progress=True, **kwargs)
    except AnalysisError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    log.info("wrote %s and %s", args.out / "summary.md", args.out / "summary.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
