"""The runs' optimal QAT fraction f* per classic (N, D_total, B) cell, with its uncertainty; its
trend with S_total and the predictor constant a, with bootstrap intervals.

f* is the grid fraction of lowest loss (no interpolation: the grid is what was measured). Its
uncertainty comes from replicates of the cell's loss-against-fraction curve:

- cells with >= 2 seeds that have every fraction: the seeds are resampled with replacement and
  f* is the argmin of the mean curve: paired, since a seed shifts all its fractions together;
- other cells: the curve plus Gaussian noise at the grid's *paired* relative noise
  (`analysis.seed_noise.paired_noise`) where the grid has seed pairs; without any, the pooled
  residual of a local quadratic in logit(f) around each curve's best fraction
  (`quadratic_noise`; an upper bound: it also holds the quadratic's misfit).

A cell whose f* is its smallest or largest fraction is *censored*: the true optimum may lie
beyond the grid. The trend and a are bootstrapped over cells and replicates together: each
resample draws cells with replacement and takes one replicate f* per cell.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypedDict

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from analysis.anchored_fit import CI_LEVEL
from analysis.predict import PAPER_A, fit_predictor
from analysis.seed_noise import cell_curves, paired_noise, seed_table

N_REPLICATES = 400
QUADRATIC_WINDOW = 5


@dataclass
class CellOptima:
    """Per cell: its key columns (N, D_total, B and what else tells cells apart), S_total,
    n_fracs, n_seeds, f_star, f_lo, f_hi, censored ("low", "high" or ""), loss_star, method;
    `f_reps`/`log_loss_reps`: (cells, n_rep) replicate f* and log-loss at f*; `noise`: the
    relative noise the single-seed cells were perturbed with, and where from.

    `low_frac`, `low_gap` (cells,) and `low_gap_reps` (cells, n_rep): each curve's lowest
    fraction and its log-loss there above the curve's minimum, what a short QAT phase costs.
    It tells curves apart where f* cannot: at the grid's top fraction f* is censored, but a
    curve that needs more QAT still rises more steeply towards few QAT tokens."""

    cells: pd.DataFrame
    f_reps: np.ndarray
    log_loss_reps: np.ndarray
    noise: float
    noise_source: str
    low_frac: np.ndarray
    low_gap: np.ndarray
    low_gap_reps: np.ndarray


def quadratic_noise(curves: dict[Any, pd.DataFrame]) -> tuple[float, int]:
    """Pooled relative residual of a local quadratic fitted to each seed's log-loss curve, and its
    degrees of freedom; (nan, 0) without a curve of >= 4 fractions.

    Local: the `QUADRATIC_WINDOW` fractions around the curve's best, in logit(f), where the
    loss's two walls (f → 0 and f → 1) are symmetric enough for a parabola: over the whole
    curve in f the parabola's misfit dominates the noise (8x on the synthetic grids)."""
    ss, dof = 0.0, 0
    for c in curves.values():
        for s in c.columns:
            y = c[s].dropna()
            if len(y) < 4:
                continue
            v, f = y.to_numpy(), y.index.to_numpy(dtype=float)
            w = min(QUADRATIC_WINDOW, len(v))
            lo = min(max(int(np.argmin(v)) - w // 2, 0), len(v) - w)
            v, x = v[lo : lo + w], np.log(f[lo : lo + w] / (1 - f[lo : lo + w]))
            ss += float(((v - np.polyval(np.polyfit(x, v, 2), x)) ** 2).sum())
            dof += w - 3
    return (math.sqrt(ss / dof), dof) if dof else (math.nan, 0)


def curve_noise(curves: dict[Any, pd.DataFrame]) -> tuple[float, str]:
    """The noise of one seed's log-loss at a fraction, and where it came from: paired seed
    noise where cells have seeds, else local quadratic residuals, else none."""
    sigma, dof = paired_noise(curves)
    if dof:
        return sigma, f"paired seed noise ({dof} dof)"
    sigma, dof = quadratic_noise(curves)
    if dof:
        return sigma, f"local quadratic residuals ({dof} dof)"
    return 0.0, "none: no cell to estimate it from"


@dataclass(frozen=True)
class CurveReplicates:
    """One cell's log-loss curve over its fractions and ``n_rep`` replicates of it."""

    fracs: np.ndarray
    centre: np.ndarray  # the seeds' mean (fractions without a value dropped)
    replicates: np.ndarray  # (n_rep, fracs)
    method: str


def curve_replicates(
    curve: pd.DataFrame, sigma: float, rng: np.random.Generator, n_rep: int
) -> CurveReplicates:
    """Seeds resampled where the curve has >= 2 complete seeds, else noise of ``sigma`` added to
    the one seed (or to each fraction's mean)."""
    full = curve.dropna(axis=1)
    fracs = curve.index.to_numpy(dtype=float)
    if full.shape[1] >= 2:
        v = full.to_numpy()
        picks = rng.integers(0, v.shape[1], size=(n_rep, v.shape[1]))
        return CurveReplicates(
            fracs, v.mean(axis=1), v[:, picks].mean(axis=2).T, f"{v.shape[1]} seeds, resampled"
        )
    centre = curve.mean(axis=1).to_numpy()
    ok = ~np.isnan(centre)
    centre, fracs = centre[ok], fracs[ok]
    replicates = centre + rng.normal(0.0, sigma, size=(n_rep, len(centre)))
    method = "1 seed, noise replicates" if curve.shape[1] == 1 else "seeds incomplete, noise"
    return CurveReplicates(fracs, centre, replicates, method)


def percentile_interval(value: float, samples: np.ndarray) -> dict[str, float | None]:
    """``value`` with the central CI_LEVEL interval of its bootstrap ``samples`` (no interval
    from fewer than 10 finite samples)."""
    q = (1 - CI_LEVEL) / 2
    s = samples[np.isfinite(samples)]
    if len(s) < 10:
        return {"value": value, "lo": None, "hi": None}
    return {"value": value, "lo": float(np.quantile(s, q)), "hi": float(np.quantile(s, 1 - q))}


def curve_optima(
    curves: dict[Any, pd.DataFrame],
    key_columns: Callable[[Any], dict[str, Any]],
    n_rep: int = N_REPLICATES,
    seed: int = 0,
) -> CellOptima:
    """f* and the loss at f* of each curve, with replicates and 95% intervals (see the module's
    docstring); ``key_columns(key)`` gives a curve's first columns, N, D_total and B among them."""
    sigma, source = curve_noise(curves)
    rng = np.random.default_rng(seed)
    q = (1 - CI_LEVEL) / 2
    rows, f_reps, l_reps, low_frac, low_gap, low_reps = [], [], [], [], [], []
    for key, c in curves.items():
        r = curve_replicates(c, sigma, rng, n_rep)
        f_rep = r.fracs[np.argmin(r.replicates, axis=1)]
        i = int(np.argmin(r.centre))
        cell = key_columns(key)
        rows.append(
            {
                **cell,
                "S_total": cell["D_total"] / (cell["N"] * cell["B"] / 8),
                "n_fracs": len(r.fracs),
                "n_seeds": c.shape[1],
                "f_star": float(r.fracs[i]),
                "f_lo": float(np.quantile(f_rep, q)),
                "f_hi": float(np.quantile(f_rep, 1 - q)),
                "censored": "low" if i == 0 else "high" if i == len(r.fracs) - 1 else "",
                "loss_star": float(np.exp(r.centre[i])),
                "method": r.method,
            }
        )
        f_reps.append(f_rep)
        l_reps.append(r.replicates.min(axis=1))
        low = int(np.argmin(r.fracs))
        low_frac.append(float(r.fracs[low]))
        low_gap.append(float(r.centre[low] - r.centre[i]))
        low_reps.append(r.replicates[:, low] - r.replicates.min(axis=1))
    shape = (len(rows), n_rep)
    return CellOptima(
        pd.DataFrame(rows),
        np.array(f_reps).reshape(shape),
        np.array(l_reps).reshape(shape),
        sigma,
        source,
        np.array(low_frac, dtype=float),
        np.array(low_gap, dtype=float),
        np.array(low_reps).reshape(shape),
    )


def cell_optima(runs: pd.DataFrame, n_rep: int = N_REPLICATES, seed: int = 0) -> CellOptima:
    """f* per classic (N, D_total, B) cell with >= 3 fractions, its replicates and a 95%
    interval."""
    curves = {
        k: c for k, c in cell_curves(seed_table(runs)).items() if len(c.dropna(how="all")) >= 3
    }
    return curve_optima(
        curves, lambda key: dict(zip(("N", "D_total", "B"), key, strict=True)), n_rep, seed
    )


def subset(optima: CellOptima, keep: pd.Series) -> CellOptima:
    """The cells where `keep` (aligned with `optima.cells`) holds, with their replicates."""
    mask = keep.to_numpy(dtype=bool)
    cells = optima.cells[mask].reset_index(drop=True)
    return CellOptima(
        cells,
        optima.f_reps[mask],
        optima.log_loss_reps[mask],
        optima.noise,
        optima.noise_source,
        optima.low_frac[mask],
        optima.low_gap[mask],
        optima.low_gap_reps[mask],
    )


class Interval(TypedDict):
    value: float | None
    lo: float | None
    hi: float | None
    n: int


class OptimumTrend(TypedDict):
    cells: int
    censored_low: int
    censored_high: int
    rho_S: Interval
    rho_S_uncensored: Interval
    rho_residual_N: Interval
    a: Interval
    paper_a: float
    paper_a_in_ci: bool | None


def _rho(x: np.ndarray, y: np.ndarray) -> float:
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    return float(spearmanr(x, y).statistic)


def _interval(value: float, samples: np.ndarray, n: int) -> Interval:
    q = (1 - CI_LEVEL) / 2
    s = samples[np.isfinite(samples)]
    if not math.isfinite(value) or len(s) < 10:
        return {
            "value": None if not math.isfinite(value) else value,
            "lo": None,
            "hi": None,
            "n": n,
        }
    return {
        "value": value,
        "lo": float(np.quantile(s, q)),
        "hi": float(np.quantile(s, 1 - q)),
        "n": n,
    }


def _stats(S: np.ndarray, N: np.ndarray, f: np.ndarray, keep: np.ndarray) -> tuple[float, ...]:
    """(ρ(f*, S), ρ(f*, S) on uncensored cells, ρ(f* − f̂(S), N), a) for one set of f*."""
    ok = S > 1  # the predictor needs ln S > 0
    a = fit_predictor(S[ok], f[ok])[0] if ok.sum() >= 1 else math.nan
    resid = f[ok] - np.exp(-a / np.log(S[ok])) if math.isfinite(a) else np.array([])
    return (
        _rho(S, f),
        _rho(S[keep], f[keep]),
        _rho(N[ok], resid) if len(resid) else math.nan,
        a,
    )


def optimum_trend(optima: CellOptima, n_boot: int = N_REPLICATES, seed: int = 0) -> OptimumTrend:
    """Spearman ρ of f* against S_total (all cells and uncensored ones), ρ of the predictor's
    residual f* − f̂(S) against N (is f* a function of S alone?), and the predictor constant a
    of f̂(S) = exp(−a / ln S), each with a 95% bootstrap interval."""
    c = optima.cells
    S, N = c.S_total.to_numpy(float), c.N.to_numpy(float)
    keep = (c.censored == "").to_numpy()
    point = _stats(S, N, c.f_star.to_numpy(float), keep)
    rng = np.random.default_rng(seed)
    n_rep = optima.f_reps.shape[1]
    samples = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(c), size=len(c))
        f = optima.f_reps[idx, rng.integers(0, n_rep, size=len(c))]
        samples.append(_stats(S[idx], N[idx], f, keep[idx]))
    boot = np.array(samples, dtype=float).reshape(n_boot, 4)
    n_ok = int((S > 1).sum())
    a = _interval(point[3], boot[:, 3], n_ok)
    return {
        "cells": len(c),
        "censored_low": int((c.censored == "low").sum()),
        "censored_high": int((c.censored == "high").sum()),
        "rho_S": _interval(point[0], boot[:, 0], len(c)),
        "rho_S_uncensored": _interval(point[1], boot[:, 1], int(keep.sum())),
        "rho_residual_N": _interval(point[2], boot[:, 2], n_ok),
        "a": a,
        "paper_a": PAPER_A,
        "paper_a_in_ci": None if a["lo"] is None else bool(a["lo"] <= PAPER_A <= a["hi"]),  # type: ignore[operator]
    }


SAME_S_TOLERANCE = 0.02


def _same_s(cells: pd.DataFrame) -> pd.Series:
    """A key shared by the cells of one bit width whose S_total agree within SAME_S_TOLERANCE:
    budgets set in tokens per parameter are rounded to whole steps, so equal ratios give S
    that differ in the last digits (or by a step's share of a small budget)."""
    key = pd.Series(0, index=cells.index)
    for _, group in cells.groupby("B"):
        ordered = group.S_total.sort_values()
        start, index = None, 0
        for i, value in ordered.items():
            if start is None or value > start * (1 + SAME_S_TOLERANCE):
                start, index = value, index + 1
            key[i] = index
    return key


def size_pairs(optima: CellOptima) -> pd.DataFrame:
    """Cells of two sizes at the same bits and S_total (the same tokens per parameter), each
    size against the next larger: f* of both and the difference f*(larger) − f*(smaller) with
    a 95% interval from their replicates (drawn independently per cell, so paired index by
    index). S_total is the pair's geometric mean; S agreeing within 2% counts as equal.

    Were f* a function of S alone, as the paper's predictor has it, the differences would
    scatter around 0; an interval away from 0 is a cell where size moved f*."""
    c = optima.cells.assign(S_key=_same_s(optima.cells))
    q = (1 - CI_LEVEL) / 2
    rows = []
    for (b, _), group in c.groupby(["B", "S_key"], sort=True):
        ordered = group.sort_values("N")
        s = float(np.exp(np.log(ordered.S_total).mean()))
        for (i, small), (j, large) in zip(
            ordered.iterrows(), list(ordered.iterrows())[1:], strict=False
        ):
            diff = optima.f_reps[j] - optima.f_reps[i]
            rows.append(
                {
                    "B": b,
                    "S_total": s,
                    "N_small": small.N,
                    "N_large": large.N,
                    "f_small": small.f_star,
                    "f_large": large.f_star,
                    "diff": large.f_star - small.f_star,
                    "diff_lo": float(np.quantile(diff, q)),
                    "diff_hi": float(np.quantile(diff, 1 - q)),
                    "censored": ",".join(
                        sorted({x for x in (small.censored, large.censored) if x})
                    ),
                }
            )
    columns = ["B", "S_total", "N_small", "N_large", "f_small", "f_large", "diff", "diff_lo"]
    return pd.DataFrame(rows, columns=[*columns, "diff_hi", "censored"])
