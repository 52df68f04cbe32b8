"""The grid at a glance: final validation loss against the QAT fraction, one line per bit width
(and pipeline), one panel per model and token budget, the FP baseline dashed; seeds averaged.

Drawn from qat.report's table of one corpus and vocabulary, with the object-oriented matplotlib
API (Agg, no pyplot state).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure

from qat.units import format_count


def group_figure(table: pd.DataFrame, title: str) -> Figure:
    panels = sorted({(m, int(t)) for m, t in zip(table["model"], table["tokens"], strict=True)})
    columns = min(3, len(panels))
    rows = math.ceil(len(panels) / columns)
    fig = Figure(figsize=(4.2 * columns, 3.4 * rows), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    widths = sorted({b for b in table["bits"] if b != "fp"}, key=float)
    cmap = colormaps["viridis"]
    colors = {b: cmap(i / max(len(widths) - 1, 1) * 0.9) for i, b in enumerate(widths)}
    for ax, (model, tokens) in zip(axes, panels, strict=False):
        cell = table[(table["model"] == model) & (table["tokens"] == tokens)]
        for bits in widths:
            for fused, style in ((False, "-"), (True, ":")):
                line = cell[(cell["bits"] == bits) & (cell["fusion"].astype(str) == str(fused))]
                if line.empty:
                    continue
                # Seeds of one cell are averaged: one point per fraction.
                mean = line.groupby(line["qat_frac"].astype(float))["final_val_loss"].mean()
                label = f"{bits}-bit" + (" fused" if fused else "")
                ax.plot(mean.index, mean.values, style, marker="o", ms=3,
                        color=colors[bits], label=label)  # fmt: skip
        fp = cell[cell["bits"] == "fp"]["final_val_loss"]
        if not fp.empty:
            ax.axhline(fp.mean(), color="grey", ls="--", lw=1, label="FP")
        ax.set_title(f"{model}, {format_count(tokens)} tokens", fontsize=9)
        ax.set_xlabel("QAT fraction")
        ax.set_ylabel("final val loss (nats/token)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=10)
    return fig


def write_group_plot(table: pd.DataFrame, title: str, out_dir: Path, stem: str) -> Path:
    """Draw ``table`` into ``out_dir/<stem>.png`` (the stem made file-safe); returns the path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{re.sub(r'[^A-Za-z0-9._-]+', '_', stem)}.png"
    group_figure(table, title).savefig(path, dpi=120, metadata={"Software": None})
    return path
