"""Number formats compared on a grid of runs: per (N, D_total, format) the runs' optimal QAT
fraction f* and the loss there, with their uncertainty; which format wins at the same element
width; whether f* differs between formats.

The law-related statistics elsewhere in `analysis` (grid_stats, optima, fusion_stats, advice)
group runs by (N, D_total, B) and so merge INT4 with FP4 e2m1, which share B = 4. Here a run's
format is part of its cell. A format's *label* names it with its bits where the family has
several widths ("int4", "int8"; a float format by its name), and formats compete within an
*element width*: the bits of one stored element (INT4, FP4 e2m1, MXFP4 and NVFP4 are all 4-bit
formats; INT8 and FP8 e4m3 8-bit ones), whatever their scales add to the bits per weight B.

Uncertainty, as `analysis.optima` does it: replicates of each cell's loss-against-fraction curve,
its seeds resampled where it has >= 2 complete ones, else the curve plus Gaussian noise at the
grid's paired seed noise (`analysis.seed_noise.paired_noise`) or, without seed pairs, the pooled
residual of a local quadratic (`analysis.optima.quadratic_noise`). Comparisons across cells are
bootstrapped over cells and replicates together.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import binomtest

from analysis.anchored_fit import CI_LEVEL
from analysis.errors import AnalysisError
from analysis.grid_stats import qat_rows
from analysis.law import INT_FORMAT, FittedLaw, bits_key
from analysis.optima import CellOptima, curve_optima, percentile_interval
from analysis.predict import optimal_bits, optimal_fraction
from analysis.seed_noise import FRAC_DIGITS, cell_curves

N_REPLICATES = 400
CELL_KEYS = ["N", "D_total", "label"]


def format_label(fmt: str, bits: float) -> str:
    """The integer family with its width ("int4"); a float format by its name."""
    return f"int{bits_key(bits)}" if fmt == INT_FORMAT else fmt


def element_width(fmt: str, bits: float) -> float:
    """The bits of one stored element: B for the integer family, the element's for a float
    format (MXFP4's 4, not its 4.25 bits per weight)."""
    if fmt == INT_FORMAT:
        return float(bits)
    from qat.quant.formats import element_bits  # torch: only for tables with float formats

    return float(element_bits(fmt))


def label_order(labels: pd.DataFrame) -> list[str]:
    """Labels (rows with label, format, B) in report order: by element width, the integer
    family first, then by bits per weight and name."""
    key = labels.assign(is_float=labels["format"] != INT_FORMAT)
    key = key.drop_duplicates("label").sort_values(["width", "is_float", "B", "label"])
    return key["label"].tolist()


def format_rows(runs: pd.DataFrame) -> pd.DataFrame:
    """The classic QAT runs of a prepared runs table with `format` (int where the table has
    none), `label`, `width` and `seed` columns and fractions rounded as seed_noise does."""
    q = qat_rows(runs, False)
    fmt = q["format"] if "format" in q else pd.Series(INT_FORMAT, index=q.index)
    seed = q["seed"].astype(str) if "seed" in q else pd.Series("0", index=q.index)
    widths = {(f, b): element_width(f, b) for f, b in set(zip(fmt, q.B, strict=True))}
    return q.assign(
        format=fmt,
        label=[format_label(f, b) for f, b in zip(fmt, q.B, strict=True)],
        width=[widths[(f, b)] for f, b in zip(fmt, q.B, strict=True)],
        seed=seed,
        frac=q.frac.round(FRAC_DIGITS),
    )


def check_formats(rows: pd.DataFrame, source: str) -> None:
    """One clear error when the table cannot compare formats: no classic QAT runs, no float
    format, a single format, or no two formats of one element width."""
    if rows.empty:
        raise AnalysisError(
            f"{source} has no classic QAT runs (B < 16, D_fp > 0, D_qat > 0, fusion false)"
        )
    labels = sorted(rows.label.unique())
    if (rows["format"] == INT_FORMAT).all():
        raise AnalysisError(
            f"{source} has no float-format runs (only {', '.join(labels)}): the formats report "
            "compares formats; train grid=formats (docs/formats.md#the-formats-grid)"
        )
    if len(labels) < 2:
        raise AnalysisError(
            f"{source} has runs of one format only ({labels[0]}); the formats report compares "
            "two or more formats of one element width"
        )
    per_width = rows.groupby("width").label.nunique()
    if not (per_width >= 2).any():
        raise AnalysisError(
            f"{source}: no two formats share an element width (formats "
            f"{', '.join(labels)}); nothing to compare at equal bits"
        )


def format_curves(rows: pd.DataFrame) -> dict[tuple[float, float, str], pd.DataFrame]:
    """Per (N, D_total, label): log-loss as a fractions × seeds frame (NaN where a run is
    missing); cells with < 3 fractions are left out (no interior optimum to see)."""
    table = rows.groupby([*CELL_KEYS, "frac", "seed"], as_index=False).loss.mean()
    curves = cell_curves(table, CELL_KEYS)
    return {key: c for key, c in curves.items() if len(c.dropna(how="all")) >= 3}


def format_optima(rows: pd.DataFrame, n_rep: int = N_REPLICATES, seed: int = 0) -> CellOptima:
    """f* and the loss at f* per (N, D_total, label) cell, with replicates and 95% intervals."""
    meta = rows.drop_duplicates("label").set_index("label")

    def key_columns(key: tuple[float, float, str]) -> dict[str, Any]:
        n, d, label = key
        return {
            "N": n,
            "D_total": d,
            "label": label,
            "format": meta.at[label, "format"],
            "B": float(meta.at[label, "B"]),
            "width": float(meta.at[label, "width"]),
        }

    return curve_optima(format_curves(rows), key_columns, n_rep, seed)


def _excludes_zero(i: dict[str, float | None]) -> bool:
    lo, hi = i["lo"], i["hi"]
    return lo is not None and hi is not None and (lo > 0 or hi < 0)


def _paired_cells(opt: CellOptima, a: str, b: str) -> tuple[pd.DataFrame, np.ndarray]:
    """The (N, D_total) cells both labels have: their rows side by side (suffixes _a, _b) and
    the row indices into `opt` of each, shape (cells, 2)."""
    c = opt.cells.reset_index(names="i")
    both = c[c.label == a].merge(c[c.label == b], on=["N", "D_total"], suffixes=("_a", "_b"))
    return both, both[["i_a", "i_b"]].to_numpy()


def compare_pair(
    opt: CellOptima, a: str, b: str, n_boot: int = N_REPLICATES, seed: int = 0
) -> dict[str, Any]:
    """Format `a` against `b` over the cells both have, at the same N and D_total (so the same
    parameter count; bits per weight as the formats have them):

    - loss at f*: per cell the relative gap L*_a / L*_b − 1 with its replicate interval and the
      winner; overall the mean log-ratio (as a relative gap) with a bootstrap interval over cells
      and replicates, and the cells each one wins;
    - f*: per cell f*_a − f*_b; overall its mean with the same bootstrap, the cells where a's f*
      is larger or smaller, and a two-sided sign test over the cells where they differ.
    """
    both, idx = _paired_cells(opt, a, b)
    if both.empty:
        return {"a": a, "b": b, "cells": 0}
    d_log = np.log(both.loss_star_a.to_numpy()) - np.log(both.loss_star_b.to_numpy())
    d_log_rep = opt.log_loss_reps[idx[:, 0]] - opt.log_loss_reps[idx[:, 1]]  # (cells, n_rep)
    d_f = both.f_star_a.to_numpy() - both.f_star_b.to_numpy()
    d_f_rep = opt.f_reps[idx[:, 0]] - opt.f_reps[idx[:, 1]]
    rng = np.random.default_rng(seed)
    n, n_rep = d_log_rep.shape
    pick_c = rng.integers(0, n, size=(n_boot, n))
    pick_r = rng.integers(0, n_rep, size=(n_boot, n))
    boot_loss = d_log_rep[pick_c, pick_r].mean(axis=1)
    boot_f = d_f_rep[pick_c, pick_r].mean(axis=1)
    q = (1 - CI_LEVEL) / 2
    per_cell = []
    for k, row in enumerate(both.itertuples()):
        gap = np.expm1(d_log_rep[k])
        per_cell.append(
            {
                "N": row.N,
                "D_total": row.D_total,
                "gap": float(np.expm1(d_log[k])),
                "gap_lo": float(np.quantile(gap, q)),
                "gap_hi": float(np.quantile(gap, 1 - q)),
                "winner": a if d_log[k] < 0 else b,
                "share_a_better": float((d_log_rep[k] < 0).mean()),
                "f_star_a": row.f_star_a,
                "f_star_b": row.f_star_b,
                "f_diff": float(d_f[k]),
            }
        )
    short = _short_qat(opt, idx, rng, n_boot)
    larger, smaller = int((d_f > 0).sum()), int((d_f < 0).sum())
    differ = larger + smaller
    sign_p = float(binomtest(larger, differ).pvalue) if differ else None
    gap = percentile_interval(float(np.expm1(d_log.mean())), np.expm1(boot_loss))
    f_diff = percentile_interval(float(d_f.mean()), boot_f)
    return {
        "a": a,
        "b": b,
        "B_a": float(both.B_a.iloc[0]),
        "B_b": float(both.B_b.iloc[0]),
        "equal_bits": bool(np.isclose(both.B_a.iloc[0], both.B_b.iloc[0])),
        "cells": n,
        "loss_gap": gap,  # mean relative gap L*_a / L*_b − 1: < 0, a is better
        "a_wins": int((d_log < 0).sum()),
        "b_wins": int((d_log > 0).sum()),
        "better": (a if gap["value"] < 0 else b) if _excludes_zero(gap) else None,  # type: ignore[operator]
        "f_diff": f_diff,  # mean f*_a − f*_b
        "f_larger": larger,
        "f_smaller": smaller,
        "f_equal": n - differ,
        "sign_test_p": sign_p,
        "f_differs": _excludes_zero(f_diff),
        "short_qat": short,
        "per_cell": per_cell,
    }


def _short_qat(
    opt: CellOptima, idx: np.ndarray, rng: np.random.Generator, n_boot: int
) -> dict[str, Any]:
    """What a short QAT phase costs each format, over the paired cells (`idx`, as
    `_paired_cells` gives them) whose curves start at the same lowest fraction: per cell the
    relative loss there above the cell's best, P = L(f_low) / L* − 1, for a and b; overall the
    mean of P_a − P_b with a bootstrap interval over cells and replicates. P_a > P_b: a loses
    more to too little QAT, so a needs more of it, whether or not f* (censored at the grid's
    top) can show it."""
    same = opt.low_frac[idx[:, 0]] == opt.low_frac[idx[:, 1]]
    idx = idx[same]
    if not len(idx):
        return {"cells": 0}
    p_a, p_b = np.expm1(opt.low_gap[idx[:, 0]]), np.expm1(opt.low_gap[idx[:, 1]])
    diff_rep = np.expm1(opt.low_gap_reps[idx[:, 0]]) - np.expm1(opt.low_gap_reps[idx[:, 1]])
    n, n_rep = diff_rep.shape
    pick_c = rng.integers(0, n, size=(n_boot, n))
    pick_r = rng.integers(0, n_rep, size=(n_boot, n))
    diff = percentile_interval(float((p_a - p_b).mean()), diff_rep[pick_c, pick_r].mean(axis=1))
    fracs = sorted(set(opt.low_frac[idx[:, 0]].tolist()))
    return {
        "cells": n,
        "fractions": fracs,  # the lowest fraction of the compared curves
        "penalty_a": float(p_a.mean()),
        "penalty_b": float(p_b.mean()),
        "diff": diff,  # mean P_a − P_b
        "a_steeper": int((p_a > p_b).sum()),
        "b_steeper": int((p_a < p_b).sum()),
        "differs": _excludes_zero(diff),
    }


def format_pairs(opt: CellOptima) -> list[tuple[str, str]]:
    """Every pair of labels of one element width, in report order (the first of a pair is the
    integer family where it takes part, else the one with fewer bits per weight)."""
    order = label_order(opt.cells)
    width = dict(zip(opt.cells.label, opt.cells.width, strict=True))
    return [(a, b) for a, b in itertools.combinations(order, 2) if math.isclose(width[a], width[b])]


def winners(opt: CellOptima) -> dict[str, Any]:
    """Per element width: per (N, D_total) the format of lowest loss at f* and the share of
    replicates in which it is lowest; overall, the cells each format wins and its mean gap to
    the best of its cell."""
    c = opt.cells
    order = label_order(c)
    out: dict[str, Any] = {}
    for width, g in c.groupby("width"):
        if g.label.nunique() < 2:
            continue
        cells, wins = [], dict.fromkeys([lab for lab in order if lab in set(g.label)], 0)
        gaps: dict[str, list[float]] = {lab: [] for lab in wins}
        for (n, d), cell in g.groupby(["N", "D_total"]):
            if len(cell) < 2:
                continue
            reps = opt.log_loss_reps[cell.index.to_numpy()]
            best = int(np.argmin(cell.loss_star.to_numpy()))
            label = cell.label.iloc[best]
            wins[label] += 1
            best_loss = float(cell.loss_star.min())
            for lab, loss in zip(cell.label, cell.loss_star, strict=True):
                gaps[lab].append(loss / best_loss - 1)
            cells.append(
                {
                    "N": n,
                    "D_total": d,
                    "winner": label,
                    "share": float((np.argmin(reps, axis=0) == best).mean()),
                    "losses": dict(zip(cell.label, cell.loss_star.astype(float), strict=True)),
                }
            )
        out[bits_key(width)] = {
            "formats": list(wins),
            "cells": cells,
            "wins": wins,
            "mean_gap_to_best": {k: float(np.mean(v)) if v else None for k, v in gaps.items()},
        }
    return out


def law_f_stars(law: FittedLaw, cells: pd.DataFrame) -> list[float]:
    """The law's optimal fraction at each cell's (N, D_total, B, format)."""
    return [optimal_fraction(law, r.N, r.D_total, r.B, r.format)[0] for r in cells.itertuples()]


def equal_memory(law: FittedLaw, opt: CellOptima) -> dict[str, Any]:
    """Formats of one element width compared through the law at equal weight memory and equal
    training compute: for each (N, D_total) cell of the grid, memory M = N·B_min/8 (the bytes of
    the cell's model in the width's leanest format) and compute C = 6·N·D_total; each format
    then has N_f = 8M/B_f parameters, D_f = C/(6·N_f) tokens and its own law-optimal fraction.
    A format whose scales cost bits per weight pays for them with fewer parameters."""
    c = opt.cells
    out: dict[str, Any] = {}
    for width, g in c.groupby("width"):
        if g.label.nunique() < 2:
            continue
        formats = g.drop_duplicates("label").set_index("label")
        order = [lab for lab in label_order(c) if lab in formats.index]
        b_min = float(formats.B.min())
        rows, wins = [], dict.fromkeys(order, 0)
        for (n, d), _ in g.groupby(["N", "D_total"]):
            memory, compute = n * b_min / 8, 6 * n * d
            losses, fracs = {}, {}
            for lab in order:
                r = optimal_bits(
                    law, memory, compute, [formats.at[lab, "B"]], formats.at[lab, "format"]
                ).iloc[0]
                losses[lab], fracs[lab] = float(r.loss), float(r.qat_frac)
            best = min(order, key=lambda lab: losses[lab])
            wins[best] += 1
            rows.append(
                {
                    "N": n,
                    "D_total": d,
                    "memory": memory,
                    "compute": compute,
                    "losses": losses,
                    "f_star": fracs,
                    "winner": best,
                }
            )
        out[bits_key(width)] = {"reference_bits": b_min, "cells": rows, "wins": wins}
    return out
