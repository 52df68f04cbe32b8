"""`python -m analysis.mini RUNS --out DIR`: the mini-reproduction's numbers (issue #8).

From a grid's runs table (`analysis.collect`: classic cells, fused cells and FP-only baselines)
it computes, all from the data:

1. the qat law fitted to the classic cells: R² overall and per bit width, and held out: refit
   without the largest model and predict that model's cells (R², mean relative error);
2. the runs' optimal QAT fraction per (N, D_total, B), the predictor constant a of
   f̂(S) = exp(−a / ln S) against the paper's 6.7297, and whether f* grows with S_total
   (Spearman rank correlation over the cells);
3. the compute wasted by QAT fraction 0.1 against the optimum, per bit width, in % of tokens:
   from the law, and from the runs' loss gap converted to tokens at the law's exchange rate;
4. fused against classic at matched cells (same N, D_total, B, fraction): mean loss difference,
   cells where fused wins, and whether that agrees with the paper (fusion is at least as good).

Writes DIR/summary.json and DIR/summary.md, and the law's files (law.json, residuals.csv,
plots/, law.md) through `analysis.fit_law.fit_and_report`: the same files, byte for byte, as
`make fit-law CSV=RUNS LAW_OUT=DIR`.

    python -m analysis.mini results/mini/runs.csv --out results/mini [--starts N] [--workers N]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import brentq
from scipy.stats import spearmanr

from analysis.collect import read_table
from analysis.errors import AnalysisError
from analysis.fit import FitResult, fit, r2_score
from analysis.fit_law import REPORT_NAME, fit_and_report
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

log = logging.getLogger("analysis.mini")

WASTE_FRAC = 0.1  # the fixed QAT fraction whose waste the issue asks about
FRAC_TOL = 0.01  # a run's fraction matches a value within this (D_qat/D_total is step-rounded)
_TOKEN_RANGE = 1e4  # token conversions search D' in [D / 1e4, D · 1e4]
_Z = 2.0  # a mean loss difference is "clear" beyond 2 standard errors


# ---------------------------------------------------------------- the table's parts


def cell_fraction(runs: pd.DataFrame) -> pd.Series:
    """Each run's QAT fraction: the configured `qat_frac` where the table has it, else
    D_qat / D_total (which the trainer rounds to whole optimizer steps)."""
    ratio = runs.D_qat / runs.D_total
    if "qat_frac" not in runs:
        return ratio
    nominal = pd.to_numeric(runs.qat_frac, errors="coerce")
    return nominal.where(nominal.notna(), ratio).astype(float)


def qat_rows(runs: pd.DataFrame, fused: bool) -> pd.DataFrame:
    """The QAT runs (B < 16, both phases present) of one pipeline, with a `frac` column."""
    keep = (runs.B < FP_BITS) & (runs.D_qat > 0) & (runs.D_fp > 0)
    keep &= runs.fusion.astype(bool) == fused
    sub = runs[keep]
    return sub.assign(frac=cell_fraction(sub), D_total=same_budget(sub.D_total))


def grid_shape(runs: pd.DataFrame) -> dict[str, Any]:
    """What the table holds: counts per pipeline and the grid's axes."""
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


# ---------------------------------------------------------------- 1. the law's fit


def fit_quality(result: FitResult) -> dict[str, Any]:
    """R² overall and per bit width, and relative errors, of the fit on the classic cells."""
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


def held_out(runs: pd.DataFrame, **fit_kwargs: Any) -> dict[str, Any]:
    """Refit without the largest model and score the law on that model's classic cells."""
    classic = qat_rows(runs, False)
    sizes = sorted(classic.N.unique())
    if len(sizes) < 2:
        return _unavailable(
            f"needs >= 2 model sizes among the classic QAT runs; found {len(sizes)}"
        )
    n_max = sizes[-1]
    train = runs[~np.isclose(runs.N, n_max)]
    try:
        refit = fit(train, "qat", **fit_kwargs).fitted
    except AnalysisError as e:
        return _unavailable(f"the refit without N = {n_max:.4g} failed: {e}")
    test = classic[np.isclose(classic.N, n_max)]
    test = test.assign(pred=refit.predict_frame(test))
    test = test.assign(rel=(test.pred / test.loss - 1.0).abs())
    by_bits = {
        bits_key(b): {"r2": r2_score(g.loss, g.pred), "mean_rel_error": float(g.rel.mean())}
        for b, g in test.groupby("B")
    }
    return {
        "available": True,
        "held_out_N": float(n_max),
        "train_points": refit.n_points,
        "train_r2": refit.r2,
        "test_points": len(test),
        "r2": r2_score(test.loss, test.pred),
        "mean_rel_error": float(test.rel.mean()),
        "max_rel_error": float(test.rel.max()),
        "by_bits": by_bits,
    }


# ---------------------------------------------------------------- 2. optimal fraction


def rank_trend(x: pd.Series, y: pd.Series) -> dict[str, Any]:
    """Spearman's rank correlation of y with x: rho, p-value, the direction and the count."""
    n = len(x)
    if n < 3 or x.nunique() < 2 or y.nunique() < 2:
        why = f"{n} cells" if n < 3 else "no variation in S_total or in the fraction"
        return {"n": n, "rho": None, "p_value": None, "direction": "undetermined", "why": why}
    rho, p = spearmanr(x, y)
    direction = "grows" if rho > 0 else "falls" if rho < 0 else "flat"
    return {"n": n, "rho": float(rho), "p_value": float(p), "direction": direction}


def _predictor(S: pd.Series, f: pd.Series) -> dict[str, Any]:
    """Fit a of f̂(S) = exp(−a / ln S), and the MAE of the fitted and of the paper's a."""
    ok = S > 1  # the predictor needs ln S > 0
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


def optimal_fractions(runs: pd.DataFrame, fitted: FittedLaw) -> dict[str, Any]:
    """Per (N, D_total, B): the runs' best fraction and the law's; the predictor; the S trend."""
    emp = empirical_optima(runs, fusion=False)
    if emp.empty:
        return _unavailable("no (N, D_total, B) cell has >= 3 classic QAT fractions")
    at_law = law_optima(fitted, emp)
    cells = emp.assign(law_frac=at_law.qat_frac.to_numpy(), law_loss=at_law.loss.to_numpy())
    return {
        "available": True,
        "paper_a": PAPER_A,
        "predictor_runs": _predictor(emp.S_total, emp.qat_frac),
        "predictor_law": _predictor(at_law.S_total, at_law.qat_frac),
        "trend_runs": rank_trend(emp.S_total, emp.qat_frac),
        "trend_law": rank_trend(at_law.S_total, at_law.qat_frac),
        "trend_runs_by_bits": {
            bits_key(b): rank_trend(g.S_total, g.qat_frac) for b, g in emp.groupby("B")
        },
        "cells": cells.to_dict(orient="records"),
    }


# ---------------------------------------------------------------- 3. wasted compute


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


def _waste_cells(runs: pd.DataFrame, fitted: FittedLaw, frac: float) -> pd.DataFrame:
    """Per classic (N, D_total, B) cell: the law's f* and waste of `frac`; where the grid has
    `frac` and >= 3 fractions, the runs' loss gap to their best and its tokens."""
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


def wasted_compute(runs: pd.DataFrame, fitted: FittedLaw, frac: float = WASTE_FRAC) -> dict:
    """Per bit width: the % of tokens that QAT fraction `frac` wastes against the optimum."""
    cells = _waste_cells(runs, fitted, frac)
    by_bits = {}
    for b, g in cells.groupby("B"):
        law = 100 * g.law_wasted
        entry: dict[str, Any] = {
            "cells": len(g),
            "law_optimal_frac_mean": float(g.law_optimal_frac.mean()),
            "law_wasted_pct_mean": float(law.mean()),
            "law_wasted_pct_min": float(law.min()),
            "law_wasted_pct_max": float(law.max()),
        }
        emp = g.dropna(subset=["runs_gap"]) if "runs_gap" in g else g.iloc[:0]
        entry["runs_cells"] = len(emp)
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


# ---------------------------------------------------------------- 4. fusion


def _cell_key(df: pd.DataFrame) -> pd.DataFrame:
    """Columns that identify a cell across pipelines: N, B, D_total, the fraction (4 decimals)."""
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
    """Fused and classic runs of the same cell side by side (repeats averaged): N, B, D_total,
    frac, loss_classic, loss_fused, diff = fused − classic."""
    keys = ["N", "B", "D_total", "frac"]
    sides = [
        _cell_key(qat_rows(runs, fused)).groupby(keys, as_index=False).loss.mean()
        for fused in (False, True)
    ]
    m = sides[0].merge(sides[1], on=keys, suffixes=("_classic", "_fused"))
    return m.assign(diff=m.loss_fused - m.loss_classic)


def verdict(diffs: pd.Series) -> tuple[str, float | None]:
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


def _fusion_stats(m: pd.DataFrame, fitted: FittedLaw) -> dict[str, Any]:
    """Statistics of matched cells: mean difference, wins, verdict, tokens saved (law)."""
    call, se = verdict(m["diff"])
    # Tokens the classic pipeline would need (by the law) to reach the fused loss.
    saved = [
        extra_tokens(
            fitted,
            r.N,
            r.D_total,
            r.B,
            r.frac,
            float(loss_at(fitted, r.N, r.D_total, r.B, r.frac)) + r.diff,
        )
        for r in m.itertuples()
    ]
    return {
        "cells": len(m),
        "mean_diff": float(m["diff"].mean()),
        "std_err": se,
        "mean_rel_diff_pct": float(100 * (m["diff"] / m.loss_classic).mean()),
        "fused_wins": int((m["diff"] < 0).sum()),
        "verdict": call,
        "matches_paper": call != "fused worse",
        "tokens_saved_pct_mean": _mean(100 * pd.Series(saved, dtype=float)),
    }


def fusion(runs: pd.DataFrame, fitted: FittedLaw) -> dict[str, Any]:
    """Fused − classic at matched cells, per bit width and overall, against the paper's claim."""
    if qat_rows(runs, True).empty:
        return _unavailable("no fused QAT runs (fusion=True) in the table")
    m = matched_cells(runs)
    if m.empty:
        return _unavailable("no fused run has a classic run at the same N, D_total, B, fraction")
    return {
        "available": True,
        "claim": "fusing the FP cooldown into QAT is at least as good as the classic pipeline",
        "overall": _fusion_stats(m, fitted),
        "by_bits": {bits_key(b): _fusion_stats(g, fitted) for b, g in m.groupby("B")},
        "cells": m.to_dict(orient="records"),
    }


# ---------------------------------------------------------------- the summary


def _unavailable(why: str) -> dict[str, Any]:
    return {"available": False, "why": why}


def summarize(runs: pd.DataFrame, result: FitResult, source: str, **fit_kwargs: Any) -> dict:
    """Everything the issue asks for, as one JSON-able dict."""
    fitted = result.fitted
    return {
        "source": source,
        "grid": grid_shape(runs),
        "fit": fit_quality(result),
        "held_out": held_out(runs, **fit_kwargs),
        "optimal_fraction": optimal_fractions(runs, fitted),
        "wasted_compute": wasted_compute(runs, fitted),
        "fusion": fusion(runs, fitted),
    }


def _plain(value: Any) -> Any:
    """JSON-safe: numpy scalars to Python, nan/inf to None, keys to strings."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _num(v: Any, fmt: str = ".4f") -> str:
    return "–" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, fmt)


def _pct(v: Any) -> str:
    return _num(None if v is None else 100 * v, ".3f")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "| " + " | ".join("---" for _ in header) + " |",
        *("| " + " | ".join(r) + " |" for r in rows),
        "",
    ]


def _md_fit(s: dict) -> list[str]:
    f, h = s["fit"], s["held_out"]
    lines = [
        "## 1. Law fit (classic cells)",
        "",
        f"- {f['n_points']} classic QAT cells fitted; R² = {_num(f['r2'], '.5f')}, mean relative "
        f"error {_pct(f['mean_rel_error'])}% (max {_pct(f['max_rel_error'])}%)",
        f"- dropped: {f['dropped_rows'] or 'none'}",
        "",
        *_table(["bits", "R²"], [[k, _num(v, ".5f")] for k, v in f["r2_by_bits"].items()]),
    ]
    if not h["available"]:
        return [*lines, f"Held out: not available ({h['why']}).", ""]
    lines += [
        f"Held out: refit without N = {h['held_out_N']:.4g} ({h['train_points']} cells, "
        f"R² = {_num(h['train_r2'], '.5f')}), predicting its {h['test_points']} cells: "
        f"R² = {_num(h['r2'], '.5f')}, mean relative error "
        f"{_pct(h['mean_rel_error'])}% (max {_pct(h['max_rel_error'])}%).",
        "",
        *_table(
            ["bits", "held-out R²", "mean rel. error (%)"],
            [
                [k, _num(v["r2"], ".4f"), _num(100 * v["mean_rel_error"], ".3f")]
                for k, v in h["by_bits"].items()
            ],
        ),
    ]
    return lines


def _trend_text(t: dict) -> str:
    if t["rho"] is None:
        return f"undetermined ({t['why']})"
    return (
        f"{t['direction']} (Spearman ρ = {t['rho']:+.3f}, p = {t['p_value']:.2g}, {t['n']} cells)"
    )


def _md_fraction(s: dict) -> list[str]:
    o = s["optimal_fraction"]
    lines = ["## 2. Optimal QAT fraction", ""]
    if not o["available"]:
        return [*lines, f"Not available: {o['why']}.", ""]
    for key, what in (
        ("predictor_runs", "runs' best fractions"),
        ("predictor_law", "law's optima"),
    ):
        p = o[key]
        if p["a"] is None:
            lines.append(f"- a from the {what}: not available ({p['why']})")
        else:
            lines.append(
                f"- a from the {what} ({p['n']} cells): **{p['a']:.4f}** vs the paper's "
                f"{o['paper_a']} (ratio {p['a_over_paper']:.3f}); MAE {p['mae']:.4f} "
                f"(paper's a: {p['paper_mae']:.4f})"
            )
    lines += [
        f"- f* against S_total = D/(N·B/8), runs: {_trend_text(o['trend_runs'])}",
        f"- f* against S_total, law: {_trend_text(o['trend_law'])}",
        "- runs, per bit width: "
        + "; ".join(
            f"{k}-bit {t['direction']}"
            + (f" (ρ = {t['rho']:+.2f}, n = {t['n']})" if t["rho"] is not None else "")
            for k, t in o["trend_runs_by_bits"].items()
        ),
        "",
    ]
    rows = [
        [
            f"{c['N']:.3g}",
            f"{c['D_total']:.3g}",
            bits_key(c["B"]),
            f"{c['S_total']:.0f}",
            f"{c['qat_frac']:.3g}",
            f"{c['law_frac']:.3f}",
            f"{predicted_fraction(c['S_total']):.3f}" if c["S_total"] > 1 else "–",
        ]
        for c in o["cells"]
    ]
    return [
        *lines,
        *_table(
            ["N", "D_total", "bits", "S_total", "f* runs", "f* law", f"f̂(S), a = {PAPER_A}"], rows
        ),
    ]


def _md_waste(s: dict) -> list[str]:
    w = s["wasted_compute"]
    f = w["frac"]
    lines = [
        f"## 3. Wasted compute of QAT fraction {f:g}",
        "",
        f"Extra tokens (% of D_total) that fraction {f:g} needs to match the optimum's loss. Law: "
        "the fitted law's optimum over every classic cell. Runs: the loss gap between the run at "
        f"{f:g} and the cell's best run, converted to tokens at the law's exchange rate (biased "
        "up by run-to-run noise: the best of several noisy runs is too low).",
        "",
    ]
    if w["note"]:
        lines += [f"Runs: {w['note']}.", ""]
    rows = [
        [
            k,
            str(e["cells"]),
            _num(e.get("law_optimal_frac_mean"), ".3f"),
            f"{_num(e.get('law_wasted_pct_mean'), '.2f')} "
            f"[{_num(e.get('law_wasted_pct_min'), '.2f')}, "
            f"{_num(e.get('law_wasted_pct_max'), '.2f')}]",
            str(e["runs_cells"]),
            _num(e.get("runs_gap_mean"), ".4f"),
            _num(e.get("runs_gap_pct_mean"), ".3f"),
            _num(e.get("runs_wasted_pct_mean"), ".2f"),
            str(e.get("runs_frac_is_best", "–")),
        ]
        for k, e in w["by_bits"].items()
    ]
    header = [
        "bits",
        "cells",
        "law f* (mean)",
        "law waste % (mean [min, max])",
        f"cells with runs at {f:g}",
        "runs' gap (nats)",
        "runs' gap (% of loss)",
        "runs' waste %",
        f"cells where {f:g} is best",
    ]
    return [*lines, *_table(header, rows)]


def _md_fusion(s: dict) -> list[str]:
    u = s["fusion"]
    lines = ["## 4. Fused vs classic", ""]
    if not u["available"]:
        return [*lines, f"Not available: {u['why']}.", ""]
    lines += [
        f"Claim (paper): {u['claim']}. Matched cells share N, D_total, B and the QAT fraction; "
        "diff = fused − classic loss (negative: fused better); verdict at 2 standard errors; "
        "tokens saved: extra tokens the classic pipeline needs, by the law, to reach the fused "
        "loss.",
        "",
    ]
    rows = [
        [
            k,
            str(e["cells"]),
            f"{e['mean_diff']:+.4f}",
            _num(e["std_err"], ".4f"),
            f"{e['mean_rel_diff_pct']:+.3f}",
            f"{e['fused_wins']}/{e['cells']}",
            _num(e["tokens_saved_pct_mean"], "+.2f"),
            e["verdict"],
            "yes" if e["matches_paper"] else "no",
        ]
        for k, e in [*u["by_bits"].items(), ("all", u["overall"])]
    ]
    header = [
        "bits",
        "cells",
        "mean diff (nats)",
        "std. err.",
        "mean diff (%)",
        "fused wins",
        "tokens saved (%)",
        "verdict",
        "matches paper",
    ]
    return [*lines, *_table(header, rows)]


def render_markdown(s: dict) -> str:
    """summary.md from the summary dict."""
    g = s["grid"]
    lines = [
        "# Mini-reproduction summary",
        "",
        f"- source: {s['source']}",
        f"- runs: {g['runs']} ({g['classic_qat']} classic QAT, {g['fused_qat']} fused QAT, "
        f"{g['fp_only']} FP-only)",
        f"- sizes N: {', '.join(f'{n:.3g}' for n in g['sizes'])}; bits: "
        f"{', '.join(bits_key(b) for b in g['bits'])}; tokens per parameter D_total/N: "
        f"{', '.join(f'{r:g}' for r in g['tokens_per_param'])} "
        f"({len(g['budgets'])} budgets D_total)",
        f"- fractions: classic {g['fractions_classic']}, fused {g['fractions_fused']}",
        "",
        *_md_fit(s),
        *_md_fraction(s),
        *_md_waste(s),
        *_md_fusion(s),
        "## Files",
        "",
        f"summary.json, law.json, residuals.csv, {REPORT_NAME} (the fit's report), plots/*.png|pdf "
        "(optimal_fraction, wasted_tokens, iso_loss, loss_vs_fraction, best_bits, fit_quality)",
        "",
    ]
    return "\n".join(lines)


def write_summary(summary: dict, out: Path) -> list[Path]:
    """DIR/summary.json and DIR/summary.md."""
    out.mkdir(parents=True, exist_ok=True)
    plain = _plain(summary)
    js = out / "summary.json"
    js.write_text(json.dumps(plain, indent=2, ensure_ascii=False, allow_nan=False) + "\n", "utf-8")
    md = out / "summary.md"
    md.write_text(render_markdown(plain), "utf-8")
    return [js, md]


def run(runs_file: Path, out: Path, progress: bool = False, **fit_kwargs: Any) -> dict[str, Any]:
    """The whole mini analysis of a runs file into `out`; returns the summary."""
    runs = read_table(runs_file)
    if qat_rows(runs, False).empty:
        raise AnalysisError(
            f"runs file {str(runs_file)!r} has no classic QAT runs (B < 16, D_fp > 0, D_qat > 0, "
            "fusion false); the law is fitted to those"
        )
    source = f"file:{runs_file}"
    result = fit_and_report(runs, source, out, "qat", progress=progress, **fit_kwargs)
    summary = summarize(runs, result, source, **fit_kwargs)
    write_summary(summary, out)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m analysis.mini",
        description="Mini-reproduction summary of a grid: law fit, held-out, optimal fraction, "
        "wasted compute, fusion.",
    )
    ap.add_argument(
        "runs", type=Path, help="runs table (.csv/.parquet), e.g. from analysis.collect"
    )
    ap.add_argument("--out", required=True, type=Path, help="output directory")
    ap.add_argument("--starts", type=int, help="multi-start count (default: the law's own)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, help="processes (default: all CPUs)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    kwargs: dict[str, Any] = {"starts": args.starts, "seed": args.seed, "workers": args.workers}
    try:
        run(args.runs, args.out, progress=True, **kwargs)
    except AnalysisError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    log.info("wrote %s and %s", args.out / "summary.md", args.out / "summary.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
