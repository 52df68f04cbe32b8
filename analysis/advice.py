"""What a fitted qat law advises beyond the grid: the best bit width under a memory budget, the
compute from which QAT matches full precision, and the law's f*(S) trend at other model sizes.

All of it is the law's extrapolation, as trustworthy as the law's fit (`analysis.anchored_fit`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, TypedDict

import numpy as np
import pandas as pd

from analysis.grid_stats import RankTrend, rank_trend
from analysis.law import FP_BITS, FittedLaw, bits_key
from analysis.predict import fp_crossover_compute, optimal_bits, optimal_fraction

# Model sizes of the paper's runs (non-embedding parameters) at which the law is extrapolated.
PAPER_SIZES = (8.6e7, 2.2e9)
PAPER_S = (30.0, 100.0, 300.0, 1e3, 3e3, 1e4)


class BestBits(TypedDict):
    memory_bytes: float
    tokens_per_param: float
    best_bits: str
    losses: dict[str, float]


class Crossover(TypedDict):
    bits: str
    compute_flops: float | None
    fp_tokens_per_param: float | None


class LawAdvice(TypedDict):
    best_bits: list[BestBits]
    crossover_memory_bytes: float
    crossover: list[Crossover]
    extrapolated_trend: dict[str, Any]


def best_bits_table(
    fitted: FittedLaw,
    memories: Sequence[float],
    tokens_per_param: Sequence[float],
    bits: Sequence[float],
) -> list[BestBits]:
    """The loss-optimal bit width per memory budget M (bytes) and FP-model tokens per parameter:
    compute C = 6·N_fp·D with N_fp = M/2 (the FP model that fills M), so every bit width gets the
    same compute and the same M (N = 8M/B, D = C/(6N))."""
    out: list[BestBits] = []
    for m in memories:
        for r in tokens_per_param:
            n_fp = m / 2
            table = optimal_bits(fitted, m, 6 * n_fp * r * n_fp, [*bits, FP_BITS])
            best = table[table.best].iloc[0]
            out.append(
                {
                    "memory_bytes": float(m),
                    "tokens_per_param": float(r),
                    "best_bits": bits_key(best.bits),
                    "losses": {
                        bits_key(b): float(v) for b, v in zip(table.bits, table.loss, strict=True)
                    },
                }
            )
    return out


def crossovers(fitted: FittedLaw, memory: float, bits: Sequence[float]) -> list[Crossover]:
    """Per bit width: the training compute from which B-bit QAT (optimal fraction) matches full
    precision at memory budget `memory`, and that compute in tokens per FP parameter."""
    out: list[Crossover] = []
    n_fp = memory / 2
    for b in bits:
        c = fp_crossover_compute(fitted, memory, b)
        ok = math.isfinite(c)
        out.append(
            {
                "bits": bits_key(b),
                "compute_flops": c if ok else None,
                "fp_tokens_per_param": c / (6 * n_fp * n_fp) if ok else None,
            }
        )
    return out


def extrapolated_trend(
    fitted: FittedLaw,
    sizes: Sequence[float] = PAPER_SIZES,
    s_values: Sequence[float] = PAPER_S,
    bits: Sequence[float] = (1, 2, 4, 6),
) -> dict[str, Any]:
    """The law's f* at the given sizes and S_total, and its Spearman trend with S per size."""
    rows = [
        {"N": n, "B": b, "S_total": s, "f_star": optimal_fraction(fitted, n, s * n * b / 8, b)[0]}
        for n in sizes
        for b in bits
        for s in s_values
    ]
    df = pd.DataFrame(rows)
    trends: dict[str, RankTrend] = {
        f"{n:.3g}": rank_trend(g.S_total, g.f_star.round(4)) for n, g in df.groupby("N")
    }
    return {"trend_by_size": trends, "cells": df.to_dict("records")}


def law_advice(
    fitted: FittedLaw, sizes: Sequence[float], tokens_per_param: Sequence[float]
) -> LawAdvice:
    """Best bit widths at the FP memory of each grid size, at the grid's smallest, middle and
    largest tokens per parameter; crossovers at the largest size's FP memory; the trend
    extrapolated to the paper's sizes."""
    bits = (1.0, 2.0, 4.0, 6.0, 8.0)
    memories = [2.0 * n for n in sizes]  # bytes of the FP (16-bit) model of each size
    tpp = sorted(tokens_per_param)
    shown = sorted({tpp[0], tpp[len(tpp) // 2], tpp[-1]})
    return {
        "best_bits": best_bits_table(fitted, memories, shown, bits),
        "crossover_memory_bytes": float(np.max(memories)),
        "crossover": crossovers(fitted, float(np.max(memories)), bits),
        "extrapolated_trend": extrapolated_trend(fitted),
    }
