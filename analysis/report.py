"""Turn a fit into files: law.json, residuals.csv, the figures and a markdown summary.

Plot settings come from the data: the largest fitted model, its bit widths and the range of
tokens per parameter that the grid covered.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from analysis import plots
from analysis.domain import loss_unit
from analysis.fit import FitResult
from analysis.health import health_lines
from analysis.law import FP_BITS, PLAIN_FORMATS, FittedLaw, bits_key
from analysis.predict import (
    PAPER_A,
    WASTE_FRAC,
    empirical_optima,
    fit_predictor,
    law_optima,
    optimal_bits,
    predicted_fraction,
    unreached_note,
    wasted_tokens_table,
)


def waste_lines(table: pd.DataFrame, n: float, d_hi: float) -> list[str]:
    """law.md's wasted-tokens table (rows of `predict.wasted_tokens_table` at model size `n`):
    waste in % of D_total, budgets beyond the largest fitted D_total `d_hi` marked, and what an
    infinite waste means."""
    beyond = table.D_total > d_hi * (1 + 1e-6)
    lines = [
        f"## Wasted tokens of QAT fraction {WASTE_FRAC:g} (N = {n:.3g})",
        "",
        "| bits | D_total | optimal fraction | wasted (% of D_total) |",
        "| --- | --- | --- | --- |",
        *(
            f"| {bits_key(r.B)} | {r.D_total:.3g}{' *' if out else ''} "
            f"| {r.optimal_frac:.3f} | {r.wasted_pct:.1f} |"
            for r, out in zip(table.itertuples(), beyond, strict=True)
        ),
        "",
    ]
    if beyond.any():
        lines.append(f"- \\* beyond the largest fitted D_total ({d_hi:.3g}): extrapolated.")
    if np.isinf(table.wasted_pct).any():
        lines.append(f"- {unreached_note(WASTE_FRAC)}.")
    return [*lines, ""]


def _qat_figures(result: FitResult, runs: pd.DataFrame) -> tuple[dict, list[str]]:
    """The qat law's figures and the summary lines about them (classic-pipeline runs only)."""
    fitted, used = result.fitted, result.residuals
    if "fusion" in runs:
        runs = runs[~runs.fusion.astype(bool)]
    n_ref = float(used.N.max())
    base = used
    if "format" in used:  # the tables and figures below are of the base format
        base = used[used["format"] == fitted.law.formats[0]]
    bits = sorted(base.B.unique())
    tpp = used.D_total / used.N
    r_lo, r_hi = float(tpp.min()), float(tpp.max())
    figs, lines = {}, []

    cells = used[["N", "D_total", "B", *(["format"] if "format" in used else [])]].drop_duplicates()
    at_law = law_optima(fitted, cells)
    emp = empirical_optima(runs)
    lines += ["## Optimal QAT fraction", ""]
    lines += [
        "Predictor f̂(S) = exp(−a / ln S) fitted to optimal fractions (MAE: mean |f̂ − f*|):",
        "",
    ]
    a_fit = {}
    for key, what, opt in (
        ("law", "the law's optima at the grid's cells", at_law),
        ("runs", "the runs' best fractions", emp),
    ):
        opt = opt[opt.S_total > 1]  # the predictor needs ln S > 0
        if len(opt):
            a, mae = fit_predictor(opt.S_total, opt.qat_frac)
            a_fit[key] = a
            paper = float(np.abs(predicted_fraction(opt.S_total) - opt.qat_frac).mean())
            lines.append(
                f"- {what} ({len(opt)} cells): a = {a:.4f}, MAE = {mae:.4f} "
                f"(paper's a = {PAPER_A}: MAE = {paper:.4f})"
            )
    lines.append("")
    figs["optimal_fraction"] = plots.optimal_fraction_vs_s(emp, a_fit.get("law"), at_law)

    budgets = np.geomspace(r_lo * n_ref, r_hi * n_ref, 8)
    wasted = wasted_tokens_table(fitted, n_ref, budgets, bits, frac=WASTE_FRAC)
    figs["wasted_tokens"] = plots.wasted_tokens(wasted)
    shown = wasted[wasted.D_total.isin((budgets[0], budgets[-1]))]
    lines += waste_lines(shown, n_ref, float(used.D_total.max()))

    figs["iso_loss"] = plots.iso_loss(fitted, n_ref, bits[:4], (r_lo * n_ref / 4, r_hi * n_ref))
    at_ref = sorted(used.D_total[np.isclose(used.N, n_ref)].unique())
    curves = at_ref if 0 < len(at_ref) <= 6 else list(np.geomspace(r_lo * n_ref, r_hi * n_ref, 5))
    figs["loss_vs_fraction"] = plots.loss_vs_fraction(fitted, n_ref, bits[0], curves, runs)

    mem_lo = float((used.N * used.B / 8).min())
    mem_hi = float(used.N.max() * FP_BITS / 8) * 10
    c_lo = 6 * float(used.N.min()) * float(used.D_total.min())
    c_hi = 6 * n_ref * float(used.D_total.max()) * 100
    table = optimal_bits(
        fitted, np.geomspace(mem_lo, mem_hi, 12), np.geomspace(c_lo, c_hi, 5), [*bits, FP_BITS]
    )
    figs["best_bits"] = plots.best_bits(table)
    return figs, lines


def _format_lines(fitted: FittedLaw) -> list[str]:
    """The number formats of a law fitted on several: each one's bits per weight, R² and factors
    on the quantization terms (1 = the same term as the base format's)."""
    law = fitted.law
    if law.formats == PLAIN_FORMATS:
        return []
    bits = (fitted.domain or {}).get("formats", {})
    r2 = fitted.settings.get("r2_by_format", {})
    terms = law.quantization_terms
    rows = [
        f"| {f} | {', '.join(bits_key(b) for b in bits.get(f, [])) or '–'} "
        f"| {r2.get(f, float('nan')):.4f} | "
        + " | ".join("1 (base)" if i == 0 else f"{fitted.params[f'{t}.{f}']:.4g}" for t in terms)
        + " |"
        for i, f in enumerate(law.formats)
    ]
    return [
        "## Number formats",
        "",
        f"Base format: {law.formats[0]}. Each other format's {', '.join(terms)} terms are the "
        "base format's at the same bits per weight (block scales counted), times its factor "
        "below (< 1: a smaller penalty). Tables and figures below are of the base format.",
        "",
        "| format | bits per weight | R² | " + " | ".join(f"{t} factor" for t in terms) + " |",
        "| --- | --- | --- | " + " | ".join("---" for _ in terms) + " |",
        *rows,
        "",
    ]


def _domain_lines(domain: dict | None) -> list[str]:
    """The ranges the law was fitted on: where its predictions are interpolation."""
    if domain is None:
        return []
    rows = [
        f"| {k} | {domain[k][0]:.3g} | {domain[k][1]:.3g} |"
        for k in ("N", "D_total", "D_fp", "D_qat", "S_total", "qat_frac", "loss")
    ]
    return [
        "## Domain",
        "",
        "The runs the law was fitted on; `analysis.predict` warns outside these ranges and "
        f"refuses other bit widths. Bits: {', '.join(bits_key(b) for b in domain['bits'])}; "
        f"loss in {loss_unit(domain)}.",
        "",
        "| quantity | smallest | largest |",
        "| --- | --- | --- |",
        *rows,
        "",
    ]


def write_report(
    result: FitResult,
    runs: pd.DataFrame,
    out: str | Path,
    source: str,
    summary_name: str = "summary.md",
) -> list[Path]:
    """Write the fit's files under `out` (the markdown report as `summary_name`); returns them."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fitted = result.fitted
    written = [fitted.save(out / "law.json")]
    result.residuals.to_csv(out / "residuals.csv", index=False)
    written.append(out / "residuals.csv")

    figs = {"fit_quality": plots.fit_quality(result.residuals)}
    extra: list[str] = []
    if not fitted.law.fp_only:
        qat_figs, extra = _qat_figures(result, runs)
        figs.update(qat_figs)
    for name, fig in figs.items():
        written += plots.save(fig, out / "plots" / name)

    ci = fitted.ci or {}
    rel = result.residuals.rel_error.abs()
    lines = [
        f"# Law fit: {fitted.law.name}",
        "",
        f"`{fitted.law.formula}`",
        "",
        f"- source: {source}",
        f"- points fitted: {fitted.n_points} (dropped: {result.dropped or 'none'})",
        f"- R² (loss): {fitted.r2:.5f}; by bit width: "
        + ", ".join(f"{k}: {v:.4f}" for k, v in fitted.r2_by_bits.items()),
        f"- relative error: mean {rel.mean():.4%}, max {rel.max():.4%}",
        f"- starts: {fitted.settings['starts']} ({fitted.settings['start_kind']}), "
        f"polished at best: {fitted.settings['polished_at_best']}, "
        f"Huber δ = {fitted.settings['delta']}, bootstrap: {fitted.settings['bootstrap']}",
        "",
        *_domain_lines(fitted.domain),
        *_format_lines(fitted),
        "## Fit health",
        "",
        *health_lines(fitted),
        "",
        "## Parameters",
        "",
        "| name | value | 95% CI |",
        "| --- | --- | --- |",
        *(
            f"| {k} | {v:.6g} | " + (f"[{ci[k][0]:.4g}, {ci[k][1]:.4g}]" if k in ci else "–") + " |"
            for k, v in fitted.params.items()
        ),
        "",
        *extra,
        "## Files",
        "",
        "law.json, residuals.csv, " + ", ".join(f"plots/{n}.png" for n in figs) + " (and .pdf)",
        "",
    ]
    (out / summary_name).write_text("\n".join(lines), "utf-8")
    written.append(out / summary_name)
    return written
