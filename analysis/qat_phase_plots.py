"""The figure of the QAT-phase report (`analysis.qat_phase`): the runs' loss against the QAT
fraction, one line per variant, one panel per (N, D_total, B), each variant's f* starred. Built
like `analysis.plots`' figures (object-oriented, headless; `plots.save` writes it without
timestamps)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis.law import bits_key
from analysis.plots import LOSS

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
PANEL_COLUMNS = 4


def loss_vs_fraction(rows: pd.DataFrame, cells: pd.DataFrame, variants: list[str]) -> Figure:
    """Per (N, D_total, B) panel: each variant's mean loss over seeds against the fraction."""
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    keys = sorted(set(zip(cells.B, cells.N, cells.D_total, strict=True)))
    ncols = min(PANEL_COLUMNS, len(keys))
    nrows = math.ceil(len(keys) / ncols)
    fig = Figure(figsize=(4.6 * ncols, 3.8 * nrows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax, (bits, n, d) in zip(axes, keys, strict=False):
        here = rows[np.isclose(rows.N, n) & np.isclose(rows.D_total, d) & rows.B.eq(bits)]
        at = cells[np.isclose(cells.N, n) & np.isclose(cells.D_total, d) & cells.B.eq(bits)]
        for k, name in enumerate(variants):
            g = here[here.variant == name].groupby("frac").loss.mean()
            if g.empty:
                continue
            color, marker = cmap(k % 10), MARKERS[k % len(MARKERS)]
            ax.plot(g.index, g.to_numpy(), color=color, marker=marker, ms=4, label=name)
            best = at[at.variant == name]
            if len(best):
                ax.plot(best.f_star, best.loss_star, marker="*", ms=12, color=color, mec="black")
        ax.set(
            xlabel="QAT fraction f",
            ylabel=LOSS,
            title=f"{bits_key(bits)}-bit, N = {n:.3g}, D = {d:.3g}",
        )
        ax.title.set_fontsize(9)
        ax.legend(fontsize=6)
    for ax in axes[len(keys) :]:
        ax.set_axis_off()
    fig.suptitle("Loss against the QAT fraction per QAT-phase variant (★ = f*)")
    return fig
