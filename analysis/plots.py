"""Figures of a fitted law. Each function returns a matplotlib Figure; `save` writes PNG and PDF.

Figures are built with the object-oriented API (`matplotlib.figure.Figure`), which renders through
Agg without touching pyplot's global state: importing this never changes a notebook's backend, and
it works headless.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure

from analysis.law import FittedLaw, bits_key
from analysis.predict import PAPER_A, loss_at, optimal_fraction, predicted_fraction

LOSS = "loss (nats/token)"
S_TOTAL = "tokens per parameter byte S_total = D_total / (N·B/8) (tokens/byte)"


def save(fig: Figure, stem: str | Path, formats: Sequence[str] = ("png", "pdf")) -> list[Path]:
    """Write `stem`.png and `stem`.pdf (or the given `formats`); returns the paths."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(f".{f}") for f in formats]
    for p in paths:
        # No creation date in the PDF and no version stamp in the PNG: the same figure gives
        # the same bytes (reproducible files, whatever matplotlib wrote them).
        meta = {"CreationDate": None} if p.suffix == ".pdf" else {"Software": None}
        fig.savefig(p, dpi=150, bbox_inches="tight", metadata=meta)
    return paths


def _palette(values: Sequence) -> dict:
    """One colour per distinct value, in sorted order."""
    values = sorted(set(values))
    cmap = colormaps["viridis"]
    return {v: cmap(i / max(len(values) - 1, 1) * 0.9) for i, v in enumerate(values)}


def _bits_label(b: float) -> str:
    return f"{bits_key(b)}-bit"


def fit_quality(residuals: pd.DataFrame) -> Figure:
    """Predicted against observed loss, one colour per bit width (from `FitResult.residuals`)."""
    fig = Figure(figsize=(5, 4.5))
    ax = fig.subplots()
    colors = _palette(residuals.B)
    for b, g in residuals.groupby("B"):
        ax.scatter(g.loss, g.predicted, s=12, color=colors[b], label=_bits_label(b))
    lims = [
        residuals[["loss", "predicted"]].min().min(),
        residuals[["loss", "predicted"]].max().max(),
    ]
    ax.plot(lims, lims, color="grey", lw=1, ls="--", label="y = x")
    ax.set(xlabel=f"observed {LOSS}", ylabel=f"predicted {LOSS}", title="Fit quality")
    ax.legend(fontsize=8)
    return fig


def optimal_fraction_vs_s(
    optima: pd.DataFrame,
    a_fit: float | None = None,
    law_optima: pd.DataFrame | None = None,
) -> Figure:
    """Optimal QAT fraction against S_total: points per bit width and the predictor curve(s).

    `optima`: columns S_total, B, qat_frac (e.g. `predict.empirical_optima`); `law_optima`: the
    fitted law's optima (hollow markers); `a_fit`: a refitted predictor constant, drawn next to the
    paper's a = 6.7297.
    """
    fig = Figure(figsize=(6, 4.5))
    ax = fig.subplots()
    frames = [f for f in (optima, law_optima) if f is not None and len(f)]
    colors = _palette(pd.concat(frames).B) if frames else {}
    for b, g in optima.groupby("B"):
        ax.scatter(g.S_total, g.qat_frac, color=colors[b], s=22, label=f"{_bits_label(b)} runs")
    if law_optima is not None:
        for b, g in law_optima.groupby("B"):
            ax.scatter(
                g.S_total,
                g.qat_frac,
                facecolors="none",
                edgecolors=colors[b],
                s=30,
                label=f"{_bits_label(b)} law",
            )
    s_all = pd.concat([f.S_total for f in frames]) if frames else pd.Series([10.0, 1e4])
    S = np.geomspace(max(s_all.min() / 1.5, 2.0), s_all.max() * 1.5, 200)
    ax.plot(
        S,
        predicted_fraction(S, PAPER_A),
        color="black",
        lw=1.5,
        label=f"exp(−a/ln S), paper a = {PAPER_A}",
    )
    if a_fit is not None:
        ax.plot(
            S,
            predicted_fraction(S, a_fit),
            color="crimson",
            ls="--",
            lw=1.5,
            label=f"exp(−a/ln S), fitted a = {a_fit:.3f}",
        )
    ax.set_xscale("log")
    ax.set(
        xlabel=S_TOTAL,
        ylabel="optimal QAT fraction f* = D_qat / D_total",
        ylim=(0, 1),
        title="Optimal QAT fraction",
    )
    ax.legend(fontsize=7)
    return fig


def wasted_tokens(table: pd.DataFrame) -> Figure:
    """Wasted tokens of a fixed fraction against D_total, one line per bit width
    (from `predict.wasted_tokens_table`)."""
    fig = Figure(figsize=(6, 4.5))
    ax = fig.subplots()
    colors = _palette(table.B)
    for b, g in table.groupby("B"):
        ax.plot(g.D_total, g.wasted_pct, marker="o", ms=3, color=colors[b], label=_bits_label(b))
    frac = table.frac.iloc[0]
    n = table.N.iloc[0]
    ax.set_xscale("log")
    ax.set(
        xlabel="total training tokens D_total (tokens)",
        ylabel="wasted tokens (% of D_total)",
        title=f"Extra tokens needed by QAT fraction {frac:g} vs the optimum (N = {n:.3g})",
    )
    ax.legend(fontsize=8)
    return fig


def iso_loss(
    fitted: FittedLaw,
    n: float,
    bits: Sequence[float],
    d_range: tuple[float, float],
    levels: int = 14,
) -> Figure:
    """Iso-loss contours over (D_fp, D_qat), one panel per bit width, with the optimal split.

    The dashed line joins, for each D_total, the point ((1 − f*)·D_total, f*·D_total).
    """
    fig = Figure(figsize=(4.2 * len(bits), 4))
    axes = np.atleast_1d(fig.subplots(1, len(bits), sharey=True))
    d = np.geomspace(*d_range, 120)
    d_fp, d_qat = np.meshgrid(d, d)
    totals = np.geomspace(2 * d_range[0], d_range[1], 25)
    for ax, b in zip(axes, bits, strict=True):
        loss = loss_at(fitted, n, d_fp + d_qat, b, d_qat / (d_fp + d_qat))
        cs = ax.contour(d_fp, d_qat, loss, levels=levels, cmap="viridis", linewidths=1)
        ax.clabel(cs, fontsize=6, fmt="%.2f")
        f_opt = np.array([optimal_fraction(fitted, n, t, b)[0] for t in totals])
        ax.plot((1 - f_opt) * totals, f_opt * totals, "k--", lw=1.5, label="optimal split")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set(
            xlim=d_range,
            ylim=d_range,
            xlabel="FP tokens D_fp (tokens)",
            title=f"{_bits_label(b)}, N = {n:.3g}",
        )
        ax.legend(fontsize=7, loc="lower left")
    axes[0].set_ylabel("QAT tokens D_qat (tokens)")
    return fig


def loss_vs_fraction(
    fitted: FittedLaw,
    n: float,
    bits: float,
    budgets: Sequence[float],
    runs: pd.DataFrame | None = None,
) -> Figure:
    """Predicted loss against the QAT fraction, one curve per budget D_total, optimum marked.

    With `runs` (a table from `analysis.collect`), the runs at this N, B and budget are overlaid.
    """
    fig = Figure(figsize=(6, 4.5))
    ax = fig.subplots()
    colors = _palette(budgets)
    f = np.linspace(0.02, 0.9, 177)  # the loss blows up as f → 1 (S_fp → 0)
    for d in budgets:
        c = colors[d]
        ax.plot(f, loss_at(fitted, n, d, bits, f), color=c, label=f"D_total = {d:.3g}")
        f_opt, l_opt = optimal_fraction(fitted, n, d, bits)
        ax.plot([f_opt], [l_opt], marker="*", ms=10, color=c)
        if runs is not None:
            sel = runs[
                np.isclose(runs.N, n) & np.isclose(runs.B, bits) & np.isclose(runs.D_total, d)
            ]
            sel = sel[sel.D_qat > 0]
            ax.scatter(
                sel.D_qat / sel.D_total, sel.loss, color=c, s=14, edgecolors="black", linewidths=0.5
            )
    ax.set(
        xlabel="QAT fraction f = D_qat / D_total",
        ylabel=LOSS,
        title=f"{_bits_label(bits)}, N = {n:.3g} (★ = optimum, dots = runs)",
    )
    ax.legend(fontsize=7)
    return fig


def best_bits(table: pd.DataFrame) -> Figure:
    """Best bit width against the memory budget, one line per training compute
    (from `predict.optimal_bits`)."""
    fig = Figure(figsize=(6, 4.5))
    ax = fig.subplots()
    best = table[table.best].sort_values("memory")
    colors = _palette(best.compute)
    for c, g in best.groupby("compute"):
        ax.plot(
            g.memory,
            g.bits,
            marker="o",
            ms=3,
            drawstyle="steps-mid",
            color=colors[c],
            label=f"C = {c:.2g} FLOPs",
        )
    ax.set_xscale("log")
    ax.set_yscale("log", base=2)
    ticks = sorted(table.bits.unique())
    ax.set_yticks(ticks, [bits_key(b) for b in ticks])
    ax.set(
        xlabel="memory budget M (bytes of weights, N = 8M/B)",
        ylabel="best bit width B (bits)",
        title="Loss-optimal bit width under a memory budget",
    )
    ax.legend(fontsize=7)
    return fig


def optima_with_intervals(
    cells: pd.DataFrame, a_fit: float | None = None, a_ci: tuple[float, float] | None = None
) -> Figure:
    """The runs' f* per cell against S_total with 95% intervals, one colour per bit width;
    censored cells (f* at a grid edge) hollow; the predictor at the paper's a and the fitted a
    (band: a's interval). `cells`: `analysis.optima.CellOptima.cells`."""
    fig = Figure(figsize=(6.5, 4.5))
    ax = fig.subplots()
    colors = _palette(cells.B)
    for b, g in cells.groupby("B"):
        err = np.vstack([g.f_star - g.f_lo, g.f_hi - g.f_star]).clip(min=0)
        ax.errorbar(g.S_total, g.f_star, yerr=err, fmt="none", ecolor=colors[b], alpha=0.5, lw=1)
        cens = g.censored != ""
        ax.scatter(g.S_total[~cens], g.f_star[~cens], color=colors[b], s=22, label=_bits_label(b))
        ax.scatter(g.S_total[cens], g.f_star[cens], facecolors="none", edgecolors=colors[b], s=26)
    s_lo, s_hi = max(float(cells.S_total.min()) / 1.5, 2.0), float(cells.S_total.max()) * 1.5
    S = np.geomspace(s_lo, max(s_hi, 2 * s_lo), 200)
    ax.plot(S, predicted_fraction(S, PAPER_A), color="black", lw=1.5, label=f"paper a = {PAPER_A}")
    if a_fit is not None:
        ax.plot(
            S,
            predicted_fraction(S, a_fit),
            color="crimson",
            ls="--",
            label=f"fitted a = {a_fit:.3g}",
        )
        if a_ci is not None:
            lo, hi = (predicted_fraction(S, a) for a in a_ci)
            ax.fill_between(S, hi, lo, color="crimson", alpha=0.12, lw=0)
    ax.set_xscale("log")
    ax.set(
        xlabel=S_TOTAL,
        ylabel="optimal QAT fraction f* (95% interval)",
        ylim=(0, 1),
        title="Runs' optimal QAT fraction (hollow: at the grid's edge)",
    )
    ax.legend(fontsize=7)
    return fig
