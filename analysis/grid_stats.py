"""Statistics of a grid of runs against the qat law: what the grid holds, how well the law fits
and extrapolates, where the optimal QAT fraction lies, what a fixed fraction wastes.

Every function takes a runs table from `analysis.collect` (N, B, D_fp, D_qat, D_total, loss,
fusion; `qat_frac` optional) and, where it compares with the law, a `FittedLaw`. Results are
JSON-able dicts (typed below); a statistic the grid cannot give is `Unavailable`, with the reason.
Fused-against-classic statistics are in `analysis.fusion_stats`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal, NotRequired, TypedDict

import numpy as np
import pandas as pd
from scipy.optimize import brentq
from scipy.stats import spearmanr

from analysis.errors import AnalysisError
from analysis.fit import FitResult, fit, r2_score
from analysis.law import FP_BITS, FittedLaw, bits_key
from analysis.predict import (
    PAPER_A,
    empirical_optima,
    fit_predictor,
    law_optima,
    loss_at,
    optimal_fraction,
    predicted_fraction,
    same_budget,
    wasted_tokens,
)

WASTE_FRAC = 0.1  # the fixed QAT fraction compared with the optimum (as predict.wasted_tokens)
FRAC_TOL = 0.01  # a run's fraction matches a value within this (D_qat/D_total is step-rounded)
_TOKEN_RANGE = 1e4  # token conversions search D' in [D / 1e4, D · 1e4]


class Unavailable(TypedDict):
    """A statistic the grid cannot give, and why."""

    available: Literal[False]
    why: str


def unavailable(why: str) -> Unavailable:
    """The result of a statistic the grid cannot give."""
    return {"available": False, "why": why}


# ---------------------------------------------------------------- the table's parts


class GridShape(TypedDict):
    runs: int
    classic_qat: int
    fused_qat: int
    fp_only: int
    sizes: list[float]
    bits: list[float]
    budgets: list[float]
    tokens_per_param: list[float]
    fractions_classic: list[float]
    fractions_fused: list[float]


def cell_fraction(runs: pd.DataFrame) -> pd.Series:
    """Each run's QAT fraction: the configured `qat_frac` where the table has it, else
    D_qat / D_total (which the trainer rounds to whole optimizer steps)."""
    ratio = runs.D_qat / runs.D_total
    if "qat_frac" not in runs:
        return ratio
    nominal = pd.to_numeric(runs.qat_frac, errors="coerce")
    return nominal.where(nominal.notna(), ratio).astype(float)


def qat_rows(runs: pd.DataFrame, fused: bool) -> pd.DataFrame:
    """The QAT runs (B < 16, both phases present) of one pipeline, with a `frac` column and
    D_total rounded to one value per budget."""
    keep = (runs.B < FP_BITS) & (runs.D_qat > 0) & (runs.D_fp > 0)
    keep &= runs.fusion.astype(bool) == fused
    sub = runs[keep]
    return sub.assign(frac=cell_fraction(sub), D_total=same_budget(sub.D_total))


def grid_shape(runs: pd.DataFrame) -> GridShape:
    """What the table holds: counts per pipeline and the grid's axes (sorted, rounded so that
    step-rounded values of one axis point collapse)."""
    classic, fused = qat_rows(runs, False), qat_rows(runs, True)

    def axis(values: pd.Series, digits: int = 6) -> list[float]:
        return sorted({float(f"{v:.{digits}g}") for v in values})

    return {
        "runs": len(runs),
        "classic_qat": len(classic),
        "fused_qat": len(fused),
        "fp_only": int((runs.B >= FP_BITS).sum()),
        "sizes": axis(classic.N),
        "bits": axis(classic.B),
        "budgets": axis(classic.D_total, 3),
        "tokens_per_param": axis(classic.D_total / classic.N, 3),
        "fractions_classic": axis(classic.frac, 3),
        "fractions_fused": axis(fused.frac, 3),
    }


# ---------------------------------------------------------------- the law's fit


class FitQuality(TypedDict):
    n_points: int
    r2: float
    r2_by_bits: dict[str, float]
    mean_rel_error: float
    max_rel_error: float
    dropped_rows: dict[str, int]
    polished_at_best: str


class HeldOutScore(TypedDict):
    r2: float
    mean_rel_error: float


class HeldOut(TypedDict):
    available: Literal[True]
    held_out_N: float
    train_points: int
    train_r2: float
    test_points: int
    r2: float
    mean_rel_error: float
    max_rel_error: float
    by_bits: dict[str, HeldOutScore]


def fit_quality(result: FitResult) -> FitQuality:
    """R² overall and per bit width, and relative errors, of a fit on its own points."""
    f, rel = result.fitted, result.residuals.rel_error.abs()
    return {
        "n_points": f.n_points,
        "r2": f.r2,
        "r2_by_bits": dict(f.r2_by_bits),
        "mean_rel_error": float(rel.mean()),
        "max_rel_error": float(rel.max()),
        "dropped_rows": dict(result.dropped),
        "polished_at_best": f.settings["polished_at_best"],
    }


def held_out(
    runs: pd.DataFrame,
    size: float | None = None,
    fitter: Callable[[pd.DataFrame], FittedLaw] | None = None,
    **fit_kwargs: Any,
) -> HeldOut | Unavailable:
    """Refit the qat law without one model size (default: the largest) and score it on that
    size's classic QAT cells: R² and relative errors, overall and per bit width.

    `fitter` refits a runs table (default: `analysis.fit.fit` of the qat law with `fit_kwargs`:
    starts, seed, workers, ...); every run of the held-out size leaves, FP runs included.
    """
    classic = qat_rows(runs, False)
    sizes = sorted(classic.N.unique())
    if len(sizes) < 2:
        return unavailable(f"needs >= 2 model sizes among the classic QAT runs; found {len(sizes)}")
    n_out = sizes[-1] if size is None else size
    if not np.isclose(sizes, n_out).any():
        return unavailable(f"no classic QAT runs at N = {n_out:.4g}")
    train = runs[~np.isclose(runs.N, n_out)]
    try:
        refit = fitter(train) if fitter else fit(train, "qat", **fit_kwargs).fitted
    except AnalysisError as e:
        return unavailable(f"the refit without N = {n_out:.4g} failed: {e}")
    test = classic[np.isclose(classic.N, n_out)]
    test = test.assign(pred=refit.predict_frame(test))
    test = test.assign(rel=(test.pred / test.loss - 1.0).abs())
    by_bits: dict[str, HeldOutScore] = {
        bits_key(b): {"r2": r2_score(g.loss, g.pred), "mean_rel_error": float(g.rel.mean())}
        for b, g in test.groupby("B")
    }
    return {
        "available": True,
        "held_out_N": float(n_out),
        "train_points": refit.n_points,
        "train_r2": refit.r2,
        "test_points": len(test),
        "r2": r2_score(test.loss, test.pred),
        "mean_rel_error": float(test.rel.mean()),
        "max_rel_error": float(test.rel.max()),
        "by_bits": by_bits,
    }


# ---------------------------------------------------------------- optimal fraction


class RankTrend(TypedDict):
    n: int
    rho: float | None
    p_value: float | None
    direction: Literal["grows", "falls", "flat", "undetermined"]
    why: NotRequired[str]


class PredictorFit(TypedDict):
    a: float | None
    n: int
    why: NotRequired[str]
    mae: NotRequired[float]
    paper_mae: NotRequired[float]
    a_over_paper: NotRequired[float]


class OptimalFractions(TypedDict):
    available: Literal[True]
    paper_a: float
    predictor_runs: PredictorFit
    predictor_law: PredictorFit
    trend_runs: RankTrend
    trend_law: RankTrend
    trend_runs_by_bits: dict[str, RankTrend]
    cells: list[dict[str, Any]]


def rank_trend(x: pd.Series, y: pd.Series) -> RankTrend:
    """Spearman's rank correlation of y with x: rho, p-value, the direction and the count.

    Undetermined (rho None, with `why`) for fewer than 3 points or a constant x or y."""
    n = len(x)
    if n < 3 or x.nunique() < 2 or y.nunique() < 2:
        why = f"{n} cells" if n < 3 else "no variation in S_total or in the fraction"
        return {"n": n, "rho": None, "p_value": None, "direction": "undetermined", "why": why}
    rho, p = spearmanr(x, y)
    direction: Literal["grows", "falls", "flat"] = (
        "grows" if rho > 0 else "falls" if rho < 0 else "flat"
    )
    return {"n": n, "rho": float(rho), "p_value": float(p), "direction": direction}


def predictor_fit(S: pd.Series, f: pd.Series) -> PredictorFit:
    """Fit a of f̂(S) = exp(−a / ln S) to optimal fractions f at S; the MAE of the fitted a and of
    the paper's. Points with S <= 1 are left out (the predictor needs ln S > 0)."""
    ok = S > 1
    if not ok.any():
        return {"a": None, "n": 0, "why": "no cell with S_total > 1"}
    a, mae = fit_predictor(S[ok], f[ok])
    paper_mae = float(np.abs(predicted_fraction(S[ok]) - f[ok]).mean())
    return {
        "a": a,
        "n": int(ok.sum()),
        "mae": mae,
        "paper_mae": paper_mae,
        "a_over_paper": a / PAPER_A,
    }


def optimal_fractions(runs: pd.DataFrame, fitted: FittedLaw) -> OptimalFractions | Unavailable:
    """Per classic (N, D_total, B) cell with >= 3 fractions: the runs' best fraction f* and the
    law's; the predictor constant a fitted to each; Spearman's trend of f* against S_total
    (overall and per bit width for the runs, overall for the law)."""
    emp = empirical_optima(runs, fusion=False)
    if emp.empty:
        return unavailable("no (N, D_total, B) cell has >= 3 classic QAT fractions")
    at_law = law_optima(fitted, emp)
    cells = emp.assign(law_frac=at_law.qat_frac.to_numpy(), law_loss=at_law.loss.to_numpy())
    return {
        "available": True,
        "paper_a": PAPER_A,
        "predictor_runs": predictor_fit(emp.S_total, emp.qat_frac),
        "predictor_law": predictor_fit(at_law.S_total, at_law.qat_frac),
        "trend_runs": rank_trend(emp.S_total, emp.qat_frac),
        "trend_law": rank_trend(at_law.S_total, at_law.qat_frac),
        "trend_runs_by_bits": {
            bits_key(b): rank_trend(g.S_total, g.qat_frac) for b, g in emp.groupby("B")
        },
        "cells": cells.to_dict(orient="records"),
    }


# ---------------------------------------------------------------- wasted compute


class WasteByBits(TypedDict):
    cells: int
    law_optimal_frac_mean: float
    law_wasted_pct_mean: float
    law_wasted_pct_min: float
    law_wasted_pct_max: float
    law_wasted_pct_median: float
    law_unreachable: int
    runs_cells: int
    runs_gap_mean: NotRequired[float]
    runs_gap_pct_mean: NotRequired[float]
    runs_wasted_pct_mean: NotRequired[float | None]
    runs_frac_is_best: NotRequired[int]


class WastedCompute(TypedDict):
    frac: float
    by_bits: dict[str, WasteByBits]
    note: str | None
    cells: list[dict[str, Any]]


def extra_tokens(
    fitted: FittedLaw, n: float, d_total: float, bits: float, frac: float, target: float
) -> float | None:
    """D'/D_total − 1 for the D' at which the law's loss at (n, D', bits, frac) is `target`.

    The law as an exchange rate between loss and tokens; None when D' is outside
    [D_total / 1e4, D_total · 1e4].
    """

    def gap(log_d: float) -> float:
        return float(loss_at(fitted, n, math.exp(log_d), bits, frac)) - target

    log_d = math.log(d_total)
    lo, hi = log_d - math.log(_TOKEN_RANGE), log_d + math.log(_TOKEN_RANGE)
    if gap(lo) < 0 or gap(hi) > 0:
        return None
    return math.exp(brentq(gap, lo, hi, xtol=1e-10) - log_d) - 1.0


def _near(values: pd.Series, target: float) -> pd.Series:
    return (values - target).abs() <= FRAC_TOL


def waste_cells(runs: pd.DataFrame, fitted: FittedLaw, frac: float = WASTE_FRAC) -> pd.DataFrame:
    """Per classic (N, D_total, B) cell: the law's f* and the tokens `frac` wastes (law_wasted,
    / D_total); where the grid has `frac` and >= 3 fractions, also the runs' best fraction, the
    loss gap of `frac` to it (runs_gap, runs_gap_rel) and that gap in tokens at the law's
    exchange rate (runs_wasted, / D_total)."""
    classic = qat_rows(runs, False)
    rows = []
    for (n, d, b), g in classic.groupby(["N", "D_total", "B"]):
        f_opt, _ = optimal_fraction(fitted, n, d, b)
        row = {"N": n, "D_total": d, "B": b, "law_optimal_frac": f_opt}
        row["law_wasted"] = wasted_tokens(fitted, n, d, b, frac)
        at_frac = g[_near(g.frac, frac)]
        if len(at_frac) and g.frac.round(6).nunique() >= 3:
            gap = max(float(at_frac.loss.mean() - g.loss.min()), 0.0)
            law_at_frac = float(loss_at(fitted, n, d, b, frac))
            row |= {
                "runs_best_frac": float(g.frac[g.loss.idxmin()]),
                "runs_gap": gap,
                "runs_gap_rel": gap / float(g.loss.min()),
                "runs_wasted": extra_tokens(fitted, n, d, b, frac, law_at_frac - gap),
            }
        rows.append(row)
    return pd.DataFrame(rows)


def _mean(values: pd.Series) -> float | None:
    v = pd.to_numeric(values, errors="coerce").dropna()
    return float(v.mean()) if len(v) else None


def wasted_compute(
    runs: pd.DataFrame, fitted: FittedLaw, frac: float = WASTE_FRAC
) -> WastedCompute:
    """Per bit width: the % of tokens that QAT fraction `frac` wastes against the optimum, by the
    law (mean, min, max over the cells) and by the runs (`waste_cells`, averaged); `note` says
    why the runs' part is missing when no cell has runs at `frac`."""
    cells = waste_cells(runs, fitted, frac)
    by_bits: dict[str, WasteByBits] = {}
    for b, g in cells.groupby("B"):
        law = 100 * g.law_wasted
        emp = g.dropna(subset=["runs_gap"]) if "runs_gap" in g else g.iloc[:0]
        entry: WasteByBits = {
            "cells": len(g),
            "law_optimal_frac_mean": float(g.law_optimal_frac.mean()),
            "law_wasted_pct_mean": float(law.mean()),
            "law_wasted_pct_min": float(law.min()),
            "law_wasted_pct_max": float(law.max()),
            # The median and the count of cells where `frac` never reaches the optimum's loss
            # (wasted = inf, which makes the mean and max inf too).
            "law_wasted_pct_median": float(law.median()),
            "law_unreachable": int(np.isinf(law).sum()),
            "runs_cells": len(emp),
        }
        if len(emp):
            entry |= {
                "runs_gap_mean": float(emp.runs_gap.mean()),
                "runs_gap_pct_mean": float(100 * emp.runs_gap_rel.mean()),
                "runs_wasted_pct_mean": _mean(100 * emp.runs_wasted.astype(float)),
                "runs_frac_is_best": int(_near(emp.runs_best_frac, frac).sum()),
            }
        by_bits[bits_key(b)] = entry
    note = None if "runs_gap" in cells else f"the grid has no classic runs at fraction {frac:g}"
    return {"frac": frac, "by_bits": by_bits, "note": note, "cells": cells.to_dict("records")}
