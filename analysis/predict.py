"""What a fitted law predicts: optimal QAT fraction, wasted tokens, best bit width, FP crossover.

Conventions: N is non-embedding parameters, D_total tokens, B bits per weight (block scales
counted: 4.25 for MXFP4) of the number format `fmt` (default: the law's base format, the integer
family for a law fitted on it; B >= 16 means full precision,
whose loss is the law's Chinchilla part α + β/D^γ + ζ/N^η, i.e. the qat law's B → ∞ limit; we use
that rather than a separately fitted chinchilla law so that FP and QAT predictions share one fit),
compute = 6·N·D_total FLOPs, memory M = N·B/8 bytes.

    python -m analysis.predict --law DIR/law.json --n 1.2e9 --tokens 100B --bits 4 [--json]

(the command line lives in `analysis.predict_cli`).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy.optimize import brentq, minimize_scalar

from analysis.errors import AnalysisError
from analysis.law import CHINCHILLA, FP_BITS, FittedLaw, bits_key

PAPER_A = 6.7297  # the paper's fitted constant of f̂(S) = exp(−a / ln S)
_LOGIT_MAX = math.log((1 - 1e-4) / 1e-4)
# Fractions to scan before refining, 1e-4 … 1 − 1e-4 uniform in logit(f): both ends resolved.
_F_GRID = 1.0 / (1.0 + np.exp(-np.linspace(-_LOGIT_MAX, _LOGIT_MAX, 161)))
MAX_WASTE = 1e4  # wasted-token search stops at 10,000 × D_total
WASTE_FRAC = 0.1  # the fixed QAT fraction whose waste tables and the CLI report


def _require_qat(fitted: FittedLaw) -> None:
    if fitted.law.fp_only:
        raise AnalysisError(
            f"law {fitted.law.name!r} has no QAT terms; this needs a law fitted with --law qat"
        )


def require_positive(**values: float) -> None:
    for name, v in values.items():
        if not (math.isfinite(v) and v > 0):
            raise AnalysisError(f"{name}={v}; must be a finite number > 0")


def loss_at(
    fitted: FittedLaw,
    n: ArrayLike,
    d_total: ArrayLike,
    bits: ArrayLike,
    frac: ArrayLike,
    fmt: str | None = None,
) -> np.ndarray:
    """Predicted loss of an N-parameter, B-bit model (format `fmt`) trained on D_total tokens, a
    fraction of them QAT; B >= 16 is full precision (the Chinchilla part; `frac` and `fmt` are
    ignored). Arrays broadcast."""
    n, d_total, bits, frac = np.broadcast_arrays(
        *(np.asarray(v, float) for v in (n, d_total, bits, frac))
    )
    fp = bits >= FP_BITS
    out = CHINCHILLA.loss(fitted.law.fp_part(fitted.params), n, d_total, 0.0, FP_BITS)
    if not fp.all():
        _require_qat(fitted)
        q = ~fp
        out = np.array(out, dtype=float)
        out[q] = fitted.loss(n[q], (1 - frac[q]) * d_total[q], frac[q] * d_total[q], bits[q], fmt)
    return out


def optimal_fraction(
    fitted: FittedLaw, n: float, d_total: float, bits: float, fmt: str | None = None
) -> tuple[float, float]:
    """(f*, L*): the QAT fraction in (0, 1) that minimises the predicted loss, and that loss.

    A scan over a logit-spaced grid finds the basin; bounded Brent refines it to 1e-6.
    """
    _require_qat(fitted)
    require_positive(n=n, d_total=d_total, bits=bits)
    if bits >= FP_BITS:
        raise AnalysisError(f"bits={bits}; the QAT fraction needs bits < {FP_BITS:g}")
    losses = loss_at(fitted, n, d_total, bits, _F_GRID, fmt)
    i = int(np.argmin(losses))
    lo, hi = _F_GRID[max(i - 1, 0)], _F_GRID[min(i + 1, len(_F_GRID) - 1)]
    res = minimize_scalar(
        lambda f: float(loss_at(fitted, n, d_total, bits, f, fmt)),
        bounds=(lo, hi),
        method="bounded",
        options={"xatol": 1e-6},
    )
    if res.fun <= losses[i]:
        return float(res.x), float(res.fun)
    return float(_F_GRID[i]), float(losses[i])


def predicted_fraction(S: ArrayLike, a: float = PAPER_A) -> float | np.ndarray:
    """The paper's predictor of the optimal QAT fraction, f̂(S) = exp(−a / ln S), S = D/(N·B/8)."""
    S = np.asarray(S, dtype=float)
    if np.any(~(S > 1)):
        raise AnalysisError(f"S={S.min()}; tokens per parameter byte must be > 1 for the predictor")
    out = np.exp(-a / np.log(S))
    return float(out) if out.ndim == 0 else out


def fit_predictor(S: ArrayLike, f_opt: ArrayLike) -> tuple[float, float]:
    """Least-squares fit of `a` in f̂(S) = exp(−a / ln S) to optimal fractions; returns (a, MAE)."""
    S, f_opt = np.asarray(S, dtype=float), np.asarray(f_opt, dtype=float)
    if len(S) == 0 or S.shape != f_opt.shape:
        raise AnalysisError(
            f"need equally many S and fractions, at least one; got {S.shape}, {f_opt.shape}"
        )
    res = minimize_scalar(
        lambda a: float(((predicted_fraction(S, a) - f_opt) ** 2).sum()),
        bounds=(0.0, 100.0),
        method="bounded",
        options={"xatol": 1e-8},
    )
    a = float(res.x)
    return a, float(np.abs(predicted_fraction(S, a) - f_opt).mean())


def fraction_table(
    fitted: FittedLaw, n: float, s_values: Sequence[float], bits: Sequence[float] = (1, 2, 4, 6)
) -> pd.DataFrame:
    """The paper's predictor f̂(S) next to the law's optimal fraction per bit width, at N and at
    tokens per parameter byte S (so D_total = S·N·B/8)."""
    rows = []
    for s in s_values:
        row = {"S_total": s, "paper f̂(S)": predicted_fraction(s)}
        for b in bits:
            row[f"law f*, {bits_key(b)}-bit"] = optimal_fraction(fitted, n, s * n * b / 8, b)[0]
        rows.append(row)
    return pd.DataFrame(rows)


def same_budget(d_total: pd.Series) -> pd.Series:
    """D_total rounded to 9 significant digits: one value per budget, for grouping runs."""
    return d_total.map(lambda d: float(f"{d:.9g}"))


def empirical_optima(
    runs: pd.DataFrame, min_fractions: int = 3, fusion: bool | None = False
) -> pd.DataFrame:
    """Per (N, D_total, B) cell with >= `min_fractions` QAT fractions: the fraction of lowest loss.

    Takes a table from `analysis.collect`; returns N, D_total, B, S_total, qat_frac, loss, n_fracs
    (and format, per format, when the table has that column).
    `fusion`: the pipeline whose runs count (False: classic, True: fused, None: both mixed).
    """
    q = runs[(runs.B < FP_BITS) & (runs.D_qat > 0)]
    if fusion is not None and "fusion" in q:
        q = q[q.fusion.astype(bool) == fusion]
    # D_total to 9 digits: D_fp + D_qat of one budget can differ in the last bits across fractions.
    q = q.assign(qat_frac=q.D_qat / q.D_total, D_total=same_budget(q.D_total))
    keys = ["N", "D_total", "B", *(["format"] if "format" in q else [])]
    rows = []
    for key, g in q.groupby(keys):
        n, d, b = key[:3]
        fracs = g.qat_frac.round(6).nunique()
        if fracs >= min_fractions:
            best = g.loc[g.loss.idxmin()]
            s = d / (n * b / 8)
            rows.append(
                {
                    **dict(zip(keys, key, strict=True)),
                    "S_total": s,
                    "qat_frac": best.qat_frac,
                    "loss": best.loss,
                    "n_fracs": fracs,
                }
            )
    return pd.DataFrame(rows, columns=[*keys, "S_total", "qat_frac", "loss", "n_fracs"])


def law_optima(fitted: FittedLaw, cells: pd.DataFrame) -> pd.DataFrame:
    """The law's optimal fraction and loss for each row (N, D_total, B, and format if given) of
    `cells`."""
    out = cells[["N", "D_total", "B", *(["format"] if "format" in cells else [])]].copy()
    fmts = out["format"] if "format" in out else [None] * len(out)
    opt = [
        optimal_fraction(fitted, r.N, r.D_total, r.B, f)
        for r, f in zip(out.itertuples(), fmts, strict=True)
    ]
    out["S_total"] = out.D_total / (out.N * out.B / 8)
    out["qat_frac"] = [f for f, _ in opt]
    out["loss"] = [v for _, v in opt]
    return out


def wasted_tokens(
    fitted: FittedLaw,
    n: float,
    d_total: float,
    bits: float,
    frac: float = 0.1,
    fmt: str | None = None,
) -> float:
    """Extra tokens a fixed QAT fraction needs to reach the optimal fraction's loss, / D_total.

    Solves L(N, D', B, frac) = L*(N, D_total, B) for D' >= D_total; returns D'/D_total − 1
    (0 if `frac` is already optimal, inf if no D' up to 10,000 × D_total gets there).
    """
    if not 0 < frac < 1:
        raise AnalysisError(f"frac={frac}; must be in (0, 1)")
    _, target = optimal_fraction(fitted, n, d_total, bits, fmt)

    def gap(log_d: float) -> float:
        return float(loss_at(fitted, n, math.exp(log_d), bits, frac, fmt)) - target

    lo, hi = math.log(d_total), math.log(d_total * MAX_WASTE)
    if gap(lo) <= 0:
        return 0.0
    if gap(hi) > 0:
        return math.inf
    return math.exp(brentq(gap, lo, hi, xtol=1e-10) - lo) - 1.0


def wasted_tokens_table(
    fitted: FittedLaw,
    n: float,
    budgets: Iterable[float],
    bits: Sequence[float] = (1, 2, 4, 6),
    frac: float = WASTE_FRAC,
) -> pd.DataFrame:
    """`wasted_tokens` per bit width and budget D_total, with the optimal fraction alongside.

    Waste is in `wasted_pct`, percent of D_total: the one unit of waste in every table, report
    and CLI line; inf where `frac` never gets there within the search range (`unreached_note`).
    """
    rows = []
    for b in bits:
        for d in budgets:
            f_opt, _ = optimal_fraction(fitted, n, d, b)
            w = wasted_tokens(fitted, n, d, b, frac)
            rows.append(
                {
                    "N": n,
                    "B": b,
                    "D_total": d,
                    "frac": frac,
                    "optimal_frac": f_opt,
                    "wasted_pct": 100 * w,
                }
            )
    return pd.DataFrame(rows)


def _loss_under_memory(
    fitted: FittedLaw, memory: float, compute: float, bits: float, fmt: str | None = None
) -> dict:
    n = 8.0 * memory / bits
    d = compute / (6.0 * n)
    if bits >= FP_BITS:
        f, loss = 0.0, float(loss_at(fitted, n, d, bits, 0.0))
    else:
        f, loss = optimal_fraction(fitted, n, d, bits, fmt)
    return {
        "memory": memory,
        "compute": compute,
        "bits": bits,
        "N": n,
        "D_total": d,
        "qat_frac": f,
        "loss": loss,
    }


def optimal_bits(
    fitted: FittedLaw,
    memory: ArrayLike,
    compute: ArrayLike,
    bits: Sequence[float] = (1, 2, 4, 6, 8, 16),
    fmt: str | None = None,
) -> pd.DataFrame:
    """For each memory budget M (bytes) and training compute C (FLOPs), every bit width's model
    (N = 8M/B, D_total = C/(6N), optimal QAT fraction) and whether it is the `best` (lowest loss).
    `bits` are bits per weight of format `fmt` (block scales counted), so N = 8M/B is the model
    that fills M with its scales.
    """
    memories = np.atleast_1d(np.asarray(memory, dtype=float))
    computes = np.atleast_1d(np.asarray(compute, dtype=float))
    for m in memories:
        require_positive(memory=m)
    for c in computes:
        require_positive(compute=c)
    rows = [
        _loss_under_memory(fitted, m, c, b, fmt) for m in memories for c in computes for b in bits
    ]
    df = pd.DataFrame(rows)
    df["best"] = df.loss == df.groupby(["memory", "compute"]).loss.transform("min")
    return df


def fp_crossover_compute(
    fitted: FittedLaw,
    memory: float,
    bits: float,
    compute_range: tuple[float, float] = (1e15, 1e27),
) -> float:
    """Training compute (FLOPs) from which B-bit QAT matches full precision under a memory budget.

    Both models fill M bytes (N = 8M/B against N = 8M/16) and get the same compute; the B-bit one
    has more parameters but pays the QAT terms, which shrink with tokens per parameter byte. Returns
    the first C in `compute_range` where the B-bit loss (optimal fraction) drops to the FP loss;
    0 if it is already at or below it at the low end, inf if it never gets there.
    """
    if bits >= FP_BITS:
        raise AnalysisError(f"bits={bits}; must be < {FP_BITS:g} to compare with full precision")

    def gap(log_c: float) -> float:
        c = math.exp(log_c)
        q = _loss_under_memory(fitted, memory, c, bits)["loss"]
        return q - _loss_under_memory(fitted, memory, c, FP_BITS)["loss"]

    grid = np.linspace(math.log(compute_range[0]), math.log(compute_range[1]), 49)
    gaps = [gap(g) for g in grid]
    if gaps[0] <= 0:
        return 0.0
    for i in range(1, len(grid)):
        if gaps[i] <= 0:
            return math.exp(brentq(gap, grid[i - 1], grid[i], xtol=1e-9))
    return math.inf


def unreached_note(frac: float = WASTE_FRAC) -> str:
    """What an infinite waste means, for the line under a table or answer that shows one."""
    return (
        f"inf: QAT fraction {frac:g} never reaches the optimal fraction's loss within the "
        f"search range (D_total up to {MAX_WASTE:,.0f} × the budget)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m analysis.predict` (see `analysis.predict_cli`)."""
    from analysis.predict_cli import main as cli  # the CLI imports this module

    return cli(argv)


if __name__ == "__main__":
    sys.exit(main())
