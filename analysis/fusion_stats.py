"""Fused against classic pipeline at matched cells: which runs pair up, the loss difference, and
whether it agrees with the paper's claim that fusing the FP cooldown into QAT is at least as good.

A cell is (N, B, D_total, QAT fraction); the runs table is `analysis.collect`'s, with the
`fusion` column telling the pipelines apart. Results are JSON-able dicts (typed below).
"""

from __future__ import annotations

import math
from typing import Any, Literal, TypedDict

import pandas as pd

from analysis.grid_stats import Unavailable, extra_tokens, qat_rows, unavailable
from analysis.law import FittedLaw, bits_key
from analysis.predict import loss_at

CLAIM = "fusing the FP cooldown into QAT is at least as good as the classic pipeline"
_Z = 2.0  # a mean loss difference is "clear" beyond 2 standard errors
_KEYS = ["N", "B", "D_total", "frac"]

Verdict = Literal["fused better", "fused worse", "no clear difference", "equal"]


class FusionStats(TypedDict):
    cells: int
    mean_diff: float
    std_err: float | None
    mean_rel_diff_pct: float
    fused_wins: int
    verdict: Verdict
    matches_paper: bool
    tokens_saved_pct_mean: float | None


class FusionComparison(TypedDict):
    available: Literal[True]
    claim: str
    overall: FusionStats
    by_bits: dict[str, FusionStats]
    cells: list[dict[str, Any]]


def _cell_key(df: pd.DataFrame) -> pd.DataFrame:
    """The cell's columns and the loss; the fraction to 4 decimals so that the two pipelines'
    step-rounded fractions of one cell compare equal."""
    return pd.DataFrame(
        {
            "N": df.N.to_numpy(),
            "B": df.B.to_numpy(),
            "D_total": df.D_total.to_numpy(),
            "frac": df.frac.round(4).to_numpy(),
            "loss": df.loss.to_numpy(),
        }
    )


def matched_cells(runs: pd.DataFrame) -> pd.DataFrame:
    """Fused and classic QAT runs of the same cell side by side (repeats averaged): N, B, D_total,
    frac, loss_classic, loss_fused, diff = fused − classic. Cells of one pipeline only are left
    out."""
    sides = [
        _cell_key(qat_rows(runs, fused)).groupby(_KEYS, as_index=False).loss.mean()
        for fused in (False, True)
    ]
    m = sides[0].merge(sides[1], on=_KEYS, suffixes=("_classic", "_fused"))
    return m.assign(diff=m.loss_fused - m.loss_classic)


def verdict(diffs: pd.Series) -> tuple[Verdict, float | None]:
    """'fused better' / 'fused worse' beyond 2 standard errors of the mean, else 'no clear
    difference'; with one cell, the sign. Also the standard error (None for one cell)."""
    mean = float(diffs.mean())
    if len(diffs) < 2:
        return ("fused better" if mean < 0 else "fused worse" if mean > 0 else "equal"), None
    se = float(diffs.std(ddof=1) / math.sqrt(len(diffs)))
    if mean + _Z * se < 0:
        return "fused better", se
    if mean - _Z * se > 0:
        return "fused worse", se
    return "no clear difference", se


def fusion_stats(matched: pd.DataFrame, fitted: FittedLaw) -> FusionStats:
    """Statistics of `matched_cells` rows: mean difference and its standard error, relative
    difference, cells where fused wins, the verdict, and the tokens the classic pipeline needs,
    by the law, to reach the fused loss (mean, % of D_total; cells out of range left out)."""
    call, se = verdict(matched["diff"])
    saved = [
        extra_tokens(
            fitted,
            r.N,
            r.D_total,
            r.B,
            r.frac,
            float(loss_at(fitted, r.N, r.D_total, r.B, r.frac)) + r.diff,
        )
        for r in matched.itertuples()
    ]
    saved_pct = 100 * pd.Series(saved, dtype=float).dropna()
    return {
        "cells": len(matched),
        "mean_diff": float(matched["diff"].mean()),
        "std_err": se,
        "mean_rel_diff_pct": float(100 * (matched["diff"] / matched.loss_classic).mean()),
        "fused_wins": int((matched["diff"] < 0).sum()),
        "verdict": call,
        "matches_paper": call != "fused worse",
        "tokens_saved_pct_mean": float(saved_pct.mean()) if len(saved_pct) else None,
    }


def compare_fusion(runs: pd.DataFrame, fitted: FittedLaw) -> FusionComparison | Unavailable:
    """Fused − classic at matched cells, overall and per bit width, against the paper's claim."""
    if qat_rows(runs, True).empty:
        return unavailable("no fused QAT runs (fusion=True) in the table")
    m = matched_cells(runs)
    if m.empty:
        return unavailable("no fused run has a classic run at the same N, D_total, B, fraction")
    return {
        "available": True,
        "claim": CLAIM,
        "overall": fusion_stats(m, fitted),
        "by_bits": {bits_key(b): fusion_stats(g, fitted) for b, g in m.groupby("B")},
        "cells": m.to_dict(orient="records"),
    }
