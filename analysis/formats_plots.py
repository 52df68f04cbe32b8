"""Figures of the formats report (`analysis.formats`): loss against the QAT fraction per format at
each (N, D_total), the runs' f* per format against S_total, the loss at f* against bits per
weight. Built like `analysis.plots`' figures (object-oriented, headless; `plots.save` writes them
without timestamps)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis.law import bits_key
from analysis.plots import LOSS, S_TOTAL

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def _styles(labels: Sequence[str]) -> dict[str, tuple[Any, str]]:
    """A colour and marker per format label, fixed by its place in `labels` (report order)."""
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {lab: (cmap(i % 10), MARKERS[i % len(MARKERS)]) for i, lab in enumerate(labels)}


def loss_vs_fraction(
    rows: pd.DataFrame, cells: pd.DataFrame, n: float, d: float, order: Sequence[str]
) -> Figure:
    """The runs' loss against the QAT fraction at one (N, D_total), one line per format, one
    panel per element width; each format's f* marked with a star."""
    here = rows[np.isclose(rows.N, n) & np.isclose(rows.D_total, d)]
    widths = sorted(here.width.unique())
    fig = Figure(figsize=(5.5 * len(widths), 4.2))
    axes = np.atleast_1d(fig.subplots(1, len(widths)))
    styles = _styles(order)
    for ax, w in zip(axes, widths, strict=True):
        sub = here[here.width == w]
        for lab in [x for x in order if x in set(sub.label)]:
            g = sub[sub.label == lab].groupby("frac").loss.mean()
            color, marker = styles[lab]
            ax.plot(g.index, g.to_numpy(), color=color, marker=marker, ms=4, label=lab)
            best = cells[
                np.isclose(cells.N, n) & np.isclose(cells.D_total, d) & (cells.label == lab)
            ]
            if len(best):
                ax.plot(best.f_star, best.loss_star, marker="*", ms=12, color=color, mec="black")
        ax.set(
            xlabel="QAT fraction f = D_qat / D_total",
            ylabel=LOSS,
            title=f"{bits_key(w)}-bit elements, N = {n:.3g}, D_total = {d:.3g} (★ = f*)",
        )
        ax.legend(fontsize=7)
    return fig


def f_star_vs_s(cells: pd.DataFrame, order: Sequence[str]) -> Figure:
    """The runs' f* per format against S_total with 95% intervals; hollow where f* is at the
    grid's edge (censored)."""
    fig = Figure(figsize=(6.5, 4.5))
    ax = fig.subplots()
    styles = _styles(order)
    for lab in order:
        g = cells[cells.label == lab]
        if g.empty:
            continue
        color, marker = styles[lab]
        err = np.vstack([g.f_star - g.f_lo, g.f_hi - g.f_star]).clip(min=0)
        ax.errorbar(g.S_total, g.f_star, yerr=err, fmt="none", ecolor=color, alpha=0.5, lw=1)
        cens = (g.censored != "").to_numpy()
        ax.scatter(g.S_total[~cens], g.f_star[~cens], color=color, marker=marker, s=24, label=lab)
        ax.scatter(
            g.S_total[cens], g.f_star[cens], facecolors="none", edgecolors=color, marker=marker
        )
    ax.set_xscale("log")
    ax.set(
        xlabel=S_TOTAL,
        ylabel="runs' optimal QAT fraction f* (95% interval)",
        ylim=(0, 1),
        title="f* per format (hollow: at the grid's edge)",
    )
    ax.legend(fontsize=7)
    return fig


def loss_vs_bits(cells: pd.DataFrame, order: Sequence[str]) -> Figure:
    """The loss at f* against bits per weight, one point per format and (N, D_total), a thin
    line joining the formats of one (N, D_total) and element width."""
    fig = Figure(figsize=(6.5, 4.5))
    ax = fig.subplots()
    styles = _styles(order)
    for _, g in cells.groupby(["N", "D_total", "width"]):
        g = g.sort_values("B")
        ax.plot(g.B, g.loss_star, color="grey", lw=0.6, alpha=0.6)
    for lab in order:
        g = cells[cells.label == lab]
        if not g.empty:
            color, marker = styles[lab]
            ax.scatter(g.B, g.loss_star, color=color, marker=marker, s=28, label=lab, zorder=3)
    ticks = sorted(cells.B.unique())
    ax.set_xticks(ticks, [bits_key(b) for b in ticks])
    ax.set(
        xlabel="bits per weight B (block scales counted)",
        ylabel=f"loss at f*, {LOSS}",
        title="Loss at the runs' f* per format (lines: one N, D_total)",
    )
    ax.legend(fontsize=7)
    return fig
