"""The QAT phase's optimiser knobs compared on a grid of runs: does the QAT phase's peak learning
rate (`qat_lr_ratio`, a multiple of the FP peak) or resetting Adam's moments at the switch
(`qat_reset_moments`) move the optimal QAT fraction f*, or the loss there?

A *variant* is one (qat_lr_ratio, qat_reset_moments) pair; the baseline is the trainer's default,
ratio 1.0 with the moments kept. Per classic (N, D_total, B, variant) cell: f* (the grid fraction
of lowest loss) and the loss at f*, with replicates as `analysis.optima` makes them (a cell's
seeds resampled where it has >= 2 complete ones, else its curve plus Gaussian noise at the grid's
paired seed noise or, without seed pairs, the pooled residual of a local quadratic). Each other
variant is compared to the baseline over the (N, D_total, B) cells both have: the mean shift of
f* and of the log-loss at f*, with a bootstrap over cells and replicates together, and a sign test
over the cells where f* differs. A shift is called only when its 95% interval excludes zero.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import binomtest

from analysis.anchored_fit import CI_LEVEL
from analysis.errors import AnalysisError
from analysis.grid_stats import qat_rows
from analysis.optima import CellOptima, curve_optima, percentile_interval
from analysis.seed_noise import FRAC_DIGITS, cell_curves

N_REPLICATES = 400
KNOBS = ("qat_lr_ratio", "qat_reset_moments")
BASELINE = (1.0, False)  # the trainer's defaults: the QAT peak at the FP peak, moments kept
CELL_KEYS = ["N", "D_total", "B"]
VARIANT_KEYS = ["qat_lr_ratio", "qat_reset_moments"]
_TRUE, _FALSE = {"true", "1", "1.0", "yes"}, {"false", "0", "0.0", "no"}


def variant_label(ratio: float, reset: bool) -> str:
    """A variant's name: its QAT peak as a multiple of the FP peak and what Adam's moments do."""
    return f"peak ×{ratio:g}, moments {'reset' if reset else 'kept'}"


def _flag(value: object, row: Any) -> bool:
    if isinstance(value, bool | np.bool_):
        return bool(value)
    key = str(value).strip().lower()
    if key in _TRUE | _FALSE:
        return key in _TRUE
    raise AnalysisError(
        f"column 'qat_reset_moments', row {row}: {value!r} is not a boolean; allowed: True/False"
    )


def phase_rows(runs: pd.DataFrame, source: str) -> pd.DataFrame:
    """The classic QAT runs of a prepared runs table with the knob columns parsed, `variant`,
    `seed` (text, "0" where the table has none) and fractions rounded as seed_noise does.
    Raises AnalysisError when the table lacks the knob columns."""
    missing = [k for k in KNOBS if k not in runs.columns]
    if missing:
        raise AnalysisError(
            f"{source} lacks the QAT phase's knob columns {missing}: collect the grid's runs "
            "again with `python -m analysis.collect` (docs/repro.md#the-qat-phases-knobs)"
        )
    q = qat_rows(runs, False)
    ratio = pd.to_numeric(q["qat_lr_ratio"], errors="coerce").astype(float)
    if not (ratio > 0).all():
        i = (~(ratio > 0)).idxmax()
        raise AnalysisError(
            f"column 'qat_lr_ratio', row {i}: {q.at[i, 'qat_lr_ratio']!r} must be a number > 0"
        )
    reset = [_flag(v, i) for i, v in q["qat_reset_moments"].items()]
    seed = q["seed"].astype(str) if "seed" in q else pd.Series("0", index=q.index)
    return q.assign(
        qat_lr_ratio=ratio,
        qat_reset_moments=reset,
        variant=[variant_label(r, m) for r, m in zip(ratio, reset, strict=True)],
        seed=seed,
        frac=q.frac.round(FRAC_DIGITS),
    )


def variant_order(rows: pd.DataFrame) -> list[tuple[float, bool]]:
    """The variants of a table, the baseline first, then by ratio (descending) and reset."""
    pairs = {
        (float(r), bool(m)) for r, m in zip(rows.qat_lr_ratio, rows.qat_reset_moments, strict=True)
    }
    return sorted(pairs, key=lambda p: (p != BASELINE, -p[0], p[1]))


def check_variants(rows: pd.DataFrame, source: str) -> None:
    """One clear error when the table cannot compare the knobs: no classic QAT runs, one
    variant only, or no baseline variant to compare against."""
    if rows.empty:
        raise AnalysisError(
            f"{source} has no classic QAT runs (B < 16, D_fp > 0, D_qat > 0, fusion false)"
        )
    variants = variant_order(rows)
    if len(variants) < 2:
        raise AnalysisError(
            f"{source} has runs of one QAT-phase variant only ({variant_label(*variants[0])}); "
            "the report compares variants: train grid=repro-qat-phase"
        )
    if BASELINE not in variants:
        raise AnalysisError(
            f"{source} has no baseline runs ({variant_label(*BASELINE)}) to compare the "
            f"variants {[variant_label(*v) for v in variants]} against"
        )


def phase_curves(rows: pd.DataFrame) -> dict[tuple[Any, ...], pd.DataFrame]:
    """Per (N, D_total, B, qat_lr_ratio, qat_reset_moments): log-loss as a fractions × seeds
    frame (NaN where a run is missing); cells with < 3 fractions are left out."""
    keys = [*CELL_KEYS, *VARIANT_KEYS]
    table = rows.groupby([*keys, "frac", "seed"], as_index=False).loss.mean()
    return {key: c for key, c in cell_curves(table, keys).items() if len(c.dropna(how="all")) >= 3}


def phase_optima(rows: pd.DataFrame, n_rep: int = N_REPLICATES, seed: int = 0) -> CellOptima:
    """f* and the loss at f* per cell and variant, with replicates and 95% intervals."""

    def key_columns(key: tuple[Any, ...]) -> dict[str, Any]:
        n, d, b, ratio, reset = key
        return {
            "N": n,
            "D_total": d,
            "B": b,
            "qat_lr_ratio": float(ratio),
            "qat_reset_moments": bool(reset),
            "variant": variant_label(ratio, reset),
        }

    return curve_optima(phase_curves(rows), key_columns, n_rep, seed)


def _direction(i: dict[str, float | None]) -> int:
    """+1 / -1 where the interval lies above / below zero, 0 where it holds zero or is absent."""
    lo, hi = i["lo"], i["hi"]
    if lo is None or hi is None:
        return 0
    return 1 if lo > 0 else -1 if hi < 0 else 0


F_VERDICTS = {1: "moves f* up", -1: "moves f* down", 0: "no clear shift of f*"}
LOSS_VERDICTS = {1: "raises the loss at f*", -1: "lowers the loss at f*", 0: "no clear change"}


def changed_knobs(ratio: float, reset: bool) -> list[str]:
    """The knobs in which a variant differs from the baseline."""
    return [k for k, v, base in zip(KNOBS, (ratio, reset), BASELINE, strict=True) if v != base]


def compare_variant(
    opt: CellOptima, ratio: float, reset: bool, n_boot: int = N_REPLICATES, seed: int = 0
) -> dict[str, Any]:
    """A variant against the baseline over the (N, D_total, B) cells both have: per cell the
    shift of f* and the relative change of the loss at f* (with its replicate interval); overall
    their means with a bootstrap interval over cells and replicates, the cells where the
    variant's f* is larger / smaller / equal, a two-sided sign test over those that differ, and a
    verdict for f* and for the loss (a shift only where the 95% interval excludes zero)."""
    c = opt.cells.reset_index(names="i")
    base = c[(c.qat_lr_ratio == BASELINE[0]) & (c.qat_reset_moments == BASELINE[1])]
    var = c[(c.qat_lr_ratio == ratio) & (c.qat_reset_moments == reset)]
    both = var.merge(base, on=CELL_KEYS, suffixes=("_v", "_b"))
    head = {
        "variant": variant_label(ratio, reset),
        "qat_lr_ratio": ratio,
        "qat_reset_moments": reset,
        "changes": changed_knobs(ratio, reset),
        "cells": len(both),
    }
    if both.empty:
        return head | {"f_verdict": "no cells in common with the baseline", "loss_verdict": ""}
    iv, ib = both.i_v.to_numpy(), both.i_b.to_numpy()
    d_f = both.f_star_v.to_numpy() - both.f_star_b.to_numpy()
    d_log = np.log(both.loss_star_v.to_numpy()) - np.log(both.loss_star_b.to_numpy())
    d_f_rep = opt.f_reps[iv] - opt.f_reps[ib]
    d_log_rep = opt.log_loss_reps[iv] - opt.log_loss_reps[ib]
    rng = np.random.default_rng(seed)
    n, n_rep = d_f_rep.shape
    pick_c = rng.integers(0, n, size=(n_boot, n))
    pick_r = rng.integers(0, n_rep, size=(n_boot, n))
    f_shift = percentile_interval(float(d_f.mean()), d_f_rep[pick_c, pick_r].mean(axis=1))
    loss_change = percentile_interval(
        float(np.expm1(d_log.mean())), np.expm1(d_log_rep[pick_c, pick_r].mean(axis=1))
    )
    q = (1 - CI_LEVEL) / 2
    per_cell = []
    for k, row in enumerate(both.itertuples()):
        change = np.expm1(d_log_rep[k])
        per_cell.append(
            {
                "N": row.N,
                "D_total": row.D_total,
                "B": row.B,
                "f_star": row.f_star_v,
                "f_star_baseline": row.f_star_b,
                "f_shift": float(d_f[k]),
                "loss_change": float(np.expm1(d_log[k])),
                "loss_change_lo": float(np.quantile(change, q)),
                "loss_change_hi": float(np.quantile(change, 1 - q)),
            }
        )
    larger, smaller = int((d_f > 0).sum()), int((d_f < 0).sum())
    differ = larger + smaller
    return head | {
        "f_shift": f_shift,  # mean f*_variant − f*_baseline
        "f_larger": larger,
        "f_smaller": smaller,
        "f_equal": n - differ,
        "sign_test_p": float(binomtest(larger, differ).pvalue) if differ else None,
        "f_verdict": F_VERDICTS[_direction(f_shift)],
        "loss_change": loss_change,  # mean relative change of the loss at f*
        "loss_verdict": LOSS_VERDICTS[_direction(loss_change)],
        "per_cell": per_cell,
    }


def knob_verdicts(comparisons: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Per knob, the verdicts of the variants that change that knob alone (the clean test of
    it); a knob whose variants all change the other knob too gets an empty list."""
    out: dict[str, list[dict[str, Any]]] = {k: [] for k in KNOBS}
    for c in comparisons:
        if len(c["changes"]) == 1 and c["cells"]:
            out[c["changes"][0]].append(
                {
                    "variant": c["variant"],
                    "cells": c["cells"],
                    "f_verdict": c["f_verdict"],
                    "loss_verdict": c["loss_verdict"],
                }
            )
    return out


def compare_all(opt: CellOptima, variants: list[tuple[float, bool]], seed: int = 0) -> list[dict]:
    """Every variant but the baseline against it, in `variants`' order."""
    return [compare_variant(opt, r, m, seed=seed) for r, m in variants if (r, m) != BASELINE]
