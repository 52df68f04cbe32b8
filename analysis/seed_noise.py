"""How noisy a run's final loss is across training seeds, against the loss differences between
QAT fractions that locate the optimal fraction.

A training seed changes the FP trunk every fraction of a cell starts from, so it shifts their
losses together. Two noises follow: the *seed* noise of one run's loss (what an unpaired
comparison sees) and the *paired* noise left once each seed's common shift is removed (what
comparing fractions within one seed sees). The second decides whether a grid can locate f*.

The table is `analysis.collect`'s with a `seed` column; cells are classic QAT (N, D_total, B).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal, TypedDict

import numpy as np
import pandas as pd

from analysis.grid_stats import Unavailable, qat_rows, unavailable

FRAC_DIGITS = 4  # fractions compared to 4 decimals: the trainer rounds D_qat to whole steps


class SeedNoise(TypedDict):
    available: Literal[True]
    runs_with_seeds: int
    cells_with_seeds: int
    seed_std_rel_median: float
    seed_std_rel_max: float
    paired_std_rel: float
    paired_dof: int
    fraction_gap_rel_median: float
    best_gap_rel_median: float
    seed_over_fraction_gap: float
    paired_over_best_gap: float
    f_star_agree: int
    f_star_cells: int


def seed_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Classic QAT runs as one row per (N, D_total, B, frac, seed) with the mean loss; `seed`
    as text ("0" where the table has none)."""
    q = qat_rows(runs, False)
    seed = q["seed"].astype(str) if "seed" in q else pd.Series("0", index=q.index)
    q = q.assign(frac=q.frac.round(FRAC_DIGITS), seed=seed)
    return q.groupby(["N", "D_total", "B", "frac", "seed"], as_index=False).loss.mean()


def cell_curves(
    table: pd.DataFrame, keys: Sequence[str] = ("N", "D_total", "B")
) -> dict[tuple[Any, ...], pd.DataFrame]:
    """Per cell (`keys`, one run per frac and seed): log-loss as a fractions × seeds frame (NaN
    where a run is missing)."""
    return {
        key: np.log(g.pivot(index="frac", columns="seed", values="loss")).sort_index()
        for key, g in table.groupby(list(keys))
    }


def paired_noise(curves: dict[tuple[float, float, float], pd.DataFrame]) -> tuple[float, int]:
    """Relative noise of one run once its seed's shift is removed, pooled over cells, and its
    degrees of freedom: the residual of log L[f, s] = a_f + b_s over the seeds that have every
    fraction of their cell. (nan, 0) when no cell has two such seeds."""
    ss, dof = 0.0, 0
    for c in curves.values():
        full = c.dropna(axis=1)
        n_f, n_s = full.shape
        if n_s < 2 or n_f < 2:
            continue
        v = full.to_numpy()
        resid = v - v.mean(axis=1, keepdims=True) - v.mean(axis=0, keepdims=True) + v.mean()
        ss += float((resid**2).sum())
        dof += (n_f - 1) * (n_s - 1)
    return (math.sqrt(ss / dof), dof) if dof else (math.nan, 0)


def seed_noise(runs: pd.DataFrame) -> SeedNoise | Unavailable:
    """Seed noise against fraction gaps, over the classic cells that have >= 2 seeds.

    seed_std_rel: std of a run's loss across seeds / its mean (per run configuration);
    paired_std_rel: `paired_noise`; fraction_gap_rel: |L(f_i+1) − L(f_i)| / L between adjacent
    fractions of one seed; best_gap_rel: second-best minus best fraction of the seed-mean curve;
    f_star_agree: cells whose seeds all pick the same best fraction.
    """
    table = seed_table(runs)
    per_run = table.groupby(["N", "D_total", "B", "frac"]).loss
    counts = per_run.count()
    if (counts < 2).all():
        return unavailable("no classic QAT run configuration was trained with >= 2 seeds")
    rel_std = (per_run.std(ddof=1) / per_run.mean())[counts >= 2]
    curves = {k: c for k, c in cell_curves(table).items() if c.dropna(axis=1).shape[1] >= 2}
    sigma, dof = paired_noise(curves)
    adjacent, best_gap, agree, n_fstar = [], [], 0, 0
    for c in curves.values():
        full = np.exp(c.dropna(axis=1))
        if len(full) < 2:
            continue
        adjacent += list((full.diff().abs() / full).iloc[1:].to_numpy().ravel())
        mean = full.mean(axis=1).sort_values()
        best_gap.append(float((mean.iloc[1] - mean.iloc[0]) / mean.iloc[0]))
        n_fstar += 1
        agree += int(full.idxmin().nunique() == 1)
    if not n_fstar:
        return unavailable("no cell has >= 2 seeds with >= 2 fractions each")
    frac_gap = float(np.median(adjacent))
    med_best = float(np.median(best_gap))
    return {
        "available": True,
        "runs_with_seeds": int(counts[counts >= 2].sum()),
        "cells_with_seeds": n_fstar,
        "seed_std_rel_median": float(rel_std.median()),
        "seed_std_rel_max": float(rel_std.max()),
        "paired_std_rel": sigma,
        "paired_dof": dof,
        "fraction_gap_rel_median": frac_gap,
        "best_gap_rel_median": med_best,
        "seed_over_fraction_gap": float(rel_std.median()) / frac_gap if frac_gap else math.inf,
        "paired_over_best_gap": sigma / med_best if med_best else math.inf,
        "f_star_agree": agree,
        "f_star_cells": n_fstar,
    }
