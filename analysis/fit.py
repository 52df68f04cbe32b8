"""Fitting a law to runs: Huber loss on log-loss residuals, multi-start L-BFGS-B, bootstrap CIs.

This follows Hoffmann et al. (2022) as replicated by Epoch AI: minimise Σ Huber_δ(log L̂ − log L)
from many starts and keep the best; resample the runs to get confidence intervals.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.optimize import minimize
from scipy.stats import qmc
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from analysis.collect import prepare
from analysis.domain import domain_of
from analysis.errors import AnalysisError
from analysis.law import (
    FP_BITS,
    PLAIN_FORMATS,
    FittedLaw,
    Law,
    bits_key,
    format_order,
    get_law,
)

log = logging.getLogger(__name__)

DEFAULT_DELTA = 1e-3
_MAXITER = 2000
# Every start is optimised to a loose tolerance (the objective is of order one, so 1e-5 already
# ranks basins); the best few end points are then polished to a tight one. This halves the cost of
# thousands of starts without changing which basin wins.
_SCREEN = {"ftol": 1e-5, "gtol": 1e-5}
POLISH = {"ftol": 1e-12, "gtol": 1e-9}
_N_POLISH = 8


@dataclass
class FitResult:
    """The fitted law plus what a report needs: residuals, dropped rows, per-start objectives.

    `problem` and `best_centred` let a caller refit resamples warm-started at the optimum
    (`analysis.anchored_fit` does, for its two-stage bootstrap).
    """

    fitted: FittedLaw
    residuals: pd.DataFrame
    dropped: dict[str, int]
    start_objectives: np.ndarray
    bootstrap_params: pd.DataFrame | None
    problem: Problem | None = None
    best_centred: np.ndarray | None = None


def select_rows(law: Law, runs: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    """The rows `law` can fit, and how many rows were dropped for which reason.

    The chinchilla law has no bit width, so it fits full-precision rows only (B >= 16). The qat law
    divides by S_qat and S_fp, so it needs a QAT phase and an FP phase: FP-only rows (B = 16 or
    D_qat = 0) and QAT-from-scratch rows (D_fp = 0) would make its terms infinite. It describes
    the classic pipeline (FP cooldown, then QAT), so fused rows (fusion=True) are dropped too.
    """
    fused = runs.fusion.astype(bool) if "fusion" in runs else pd.Series(False, index=runs.index)
    if law.fp_only:
        rules = [
            ("not full precision (B < 16): the chinchilla law has no bit width", runs.B < FP_BITS)
        ]
    else:
        rules = [
            ("full precision (B >= 16): no QAT phase", runs.B >= FP_BITS),
            ("D_qat = 0: S_qat = 0 makes the QAT terms infinite", runs.D_qat <= 0),
            ("D_fp = 0: S_fp = 0 makes the FP/QAT interaction term infinite", runs.D_fp <= 0),
            ("fused pipeline (fusion=True): the law is fitted to the classic pipeline", fused),
        ]
    keep = pd.Series(True, index=runs.index)
    dropped = {}
    for reason, drop in rules:
        n = int((drop & keep).sum())
        if n:
            dropped[reason] = n
            log.info("%s law: dropped %d rows: %s", law.name, n, reason)
        keep &= ~drop
    if not keep.any():
        raise AnalysisError(
            f"no rows the {law.name} law can fit among {len(runs)} runs "
            f"(bits present: {sorted(runs.B.unique().tolist())}); dropped: {dropped}"
        )
    return runs[keep], dropped


def objective(
    x: np.ndarray, law: Law, Z: np.ndarray, y: np.ndarray, delta: float
) -> tuple[float, np.ndarray]:
    """Mean Huber loss of the log-residuals, divided by δ², and its gradient.

    Dividing by δ² changes nothing about the minimiser but keeps the objective of order one
    whatever the noise: ≈ mean |r|/δ for residuals above δ, ≈ mean (r/δ)²/2 below it. L-BFGS-B's
    ftol is relative to max(|f|, 1), so an objective far below 1 makes it an absolute tolerance
    that stops every start early: dividing by δ alone left a low-noise grid (residuals ≈ 5e-4,
    objective ≈ 1e-4) stuck at a 4x worse basin in most fits, even from 1,000 starts.
    """
    log_pred, pullback = law.log_loss_grad(x, Z)
    r = log_pred - y
    g = np.minimum(np.maximum(r, -delta), delta)  # Huber's derivative; Huber is g·(r − g/2)
    scale = 1.0 / (len(y) * delta * delta)
    return float(g @ (r - 0.5 * g)) * scale, pullback(g * scale)


def make_starts(law: Law, n: int | None = None, seed: int = 0) -> np.ndarray:
    """Starting points (internal units): the law's grid, or `n` Latin-hypercube points in its box.

    With `n` None a grid law uses its full grid and a box law its default count.
    """
    names = law.param_names
    if n is None and law.grid_starts:
        mesh = np.meshgrid(*(law.start_grid[p] for p in names), indexing="ij")
        return np.stack([m.ravel() for m in mesh], axis=-1)
    n = law.default_starts if n is None else n
    if n < 1:
        raise AnalysisError(f"starts={n}; must be >= 1")
    lo = np.array([min(law.start_grid[p]) for p in names])
    hi = np.array([max(law.start_grid[p]) for p in names])
    u = qmc.LatinHypercube(d=len(names), rng=np.random.default_rng(seed)).random(n)
    return lo + u * (hi - lo)


def one_blas_thread():
    # L-BFGS-B's tiny BLAS calls are 5-10x slower when OpenBLAS wakes its thread pool for each;
    # we parallelise over starts instead.
    return threadpool_limits(limits=1, user_api="blas")


@dataclass(frozen=True)
class Problem:
    """What every worker needs: the law and the centred data.

    `pinned` holds parameters fixed at centred values (index, value): their bounds collapse to
    the value, which L-BFGS-B treats as a constant.
    """

    law: Law
    Zc: np.ndarray  # features minus their mean over the fitted rows
    y: np.ndarray  # observed log-loss
    delta: float
    mu: np.ndarray  # the mean the features were centred at
    pinned: tuple[tuple[int, float], ...] = ()

    def bounds(
        self, pinned: tuple[tuple[int, float], ...] | None = None
    ) -> list[tuple[float, float]]:
        """The centred bounds, with the pinned parameters (default: this problem's) collapsed."""
        bounds = self.law.centred_bounds()
        for i, v in self.pinned if pinned is None else pinned:
            bounds[i] = (v, v)
        return bounds

    def minimise(
        self,
        xc0: np.ndarray,
        tol: dict,
        rows: np.ndarray | None = None,
        pinned: tuple[tuple[int, float], ...] | None = None,
    ):
        law = self.law
        bounds = self.bounds(pinned)
        lo, hi = np.array(bounds).T
        Zc, y = (self.Zc, self.y) if rows is None else (self.Zc[rows], self.y[rows])
        return minimize(
            objective,
            np.clip(xc0, lo, hi),
            args=(law, Zc, y, self.delta),
            jac=True,
            method="L-BFGS-B",
            bounds=bounds,
            options={"maxiter": _MAXITER, **tol},
        )


def _starts_chunk(problem: Problem, tol: dict, starts: np.ndarray):
    """Worker: an L-BFGS-B run per start to tolerance `tol`; returns (objectives, end points)."""
    with one_blas_thread():
        res = [problem.minimise(x0, tol) for x0 in starts]
    objs = np.array([r.fun if np.isfinite(r.fun) else np.inf for r in res])
    return objs, np.array([r.x for r in res])


def _bootstrap_chunk(problem: Problem, x0: np.ndarray, samples: np.ndarray):
    """Worker: refit each resample of the rows, warm-started at the full-data optimum."""
    with one_blas_thread():
        return np.array([problem.minimise(x0, POLISH, idx).x for idx in samples])


def run_chunks(
    fn: Callable, args: tuple, items: np.ndarray, workers: int, desc: str, progress: bool
) -> list:
    """Apply `fn(*args, chunk)` to chunks of `items` on `workers` processes, in order."""
    n_chunks = min(len(items), max(1, workers) * 8)  # several chunks per worker: smooth progress
    chunks = np.array_split(items, n_chunks)
    bar = tqdm(total=len(items), desc=desc, disable=not progress, unit="fit")
    out = []
    if workers <= 1:
        for c in chunks:
            out.append(fn(*args, c))
            bar.update(len(c))
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(fn, *args, c) for c in chunks]
            for c, f in zip(chunks, futures, strict=True):
                out.append(f.result())
                bar.update(len(c))
    bar.close()
    return out


def at_bounds(problem: Problem, xc: np.ndarray, tol: float = 1e-6) -> list[str]:
    """Free parameters whose centred value sits on a bound of the fit: the data did not decide
    them, the bound did. For a coefficient the bound is its term's value at the data's centre."""
    law = problem.law
    pinned = {i for i, _ in problem.pinned}
    out = []
    for i, (name, (lo, hi)) in enumerate(zip(law.param_names, law.centred_bounds(), strict=True)):
        if i not in pinned and min(abs(xc[i] - lo), abs(xc[i] - hi)) <= tol * (1 + abs(xc[i])):
            out.append(name)
    return out


def pin(law: Law, fixed: Mapping[str, float], x: np.ndarray) -> np.ndarray:
    """Internal vector `x` with the `fixed` parameters (natural units) put in."""
    x = np.array(x, dtype=float)
    internal = law.to_internal({**law.from_internal(x), **fixed})
    idx = [law.param_names.index(n) for n in fixed]
    x[idx] = internal[idx]
    return x


def r2_score(observed: np.ndarray, predicted: np.ndarray) -> float:
    """Coefficient of determination of the loss (natural units); nan for fewer than 2 points."""
    observed = np.asarray(observed, dtype=float)
    ss_tot = float(((observed - observed.mean()) ** 2).sum())
    if len(observed) < 2 or ss_tot == 0.0:
        return float("nan")
    return 1.0 - float(((observed - np.asarray(predicted)) ** 2).sum()) / ss_tot


def fit(
    runs: pd.DataFrame,
    law: str | Law = "qat",
    *,
    starts: int | None = None,
    delta: float = DEFAULT_DELTA,
    bootstrap: int = 0,
    seed: int = 0,
    workers: int | None = None,
    progress: bool = False,
    fixed: Mapping[str, float] | None = None,
) -> FitResult:
    """Fit `law` to a runs table (see `analysis.collect`) and report R², residuals and CIs.

    `starts`: None = the law's default starts (chinchilla: the 4,500-point grid; qat: 1,000 Latin-
    hypercube points). `bootstrap`: resamples for 95% percentile intervals (0 = none).
    `workers`: processes (default: all CPUs). `fixed`: parameters (natural units) held at the
    given values, e.g. the Chinchilla part of the qat law fitted on FP runs first.
    """
    law = get_law(law) if isinstance(law, str) else law
    if not delta > 0:
        raise AnalysisError(f"delta={delta}; must be > 0")
    if bootstrap < 0:
        raise AnalysisError(f"bootstrap={bootstrap}; must be >= 0")
    if workers is None:
        workers = os.cpu_count() or 1
    if workers < 1:
        raise AnalysisError(f"workers={workers}; must be >= 1")
    used, dropped = select_rows(law, prepare(runs))
    # The format is a factor of the qat law (Law.with_formats); the chinchilla law has none.
    fmt = used["format"] if "format" in used and not law.fp_only else None
    if fmt is not None and law.formats == PLAIN_FORMATS:
        law = law.with_formats(format_order(fmt))
    if len(used) <= len(law.param_names):
        log.warning(
            "%s law: %d points for %d parameters; the fit is underdetermined",
            law.name,
            len(used),
            len(law.param_names),
        )
    Z = law.features(used.N, used.D_fp, used.D_qat, used.B, fmt)
    y = np.log(used.loss.to_numpy())
    mu = Z.mean(axis=0)
    fixed = dict(fixed or {})
    unknown = sorted(set(fixed) - set(law.param_names))
    if unknown:
        raise AnalysisError(f"fixed parameters {unknown} are not parameters of the {law.name} law")
    for t in law.terms:
        # A term's centred coefficient folds in its exponents: pinned alone it would drift.
        if t.coef in fixed and any(e not in fixed for e, _ in t.powers):
            raise AnalysisError(
                f"fixed {t.coef!r} needs its exponents {[e for e, _ in t.powers]} fixed too"
            )
    x0s = make_starts(law, starts, seed)
    if fixed:
        x0s = np.array([pin(law, fixed, x0) for x0 in x0s])
    # Pinned at the centred values of the fixed parameters (the same in every start).
    xc_fixed = law.center(x0s[0], mu)
    pinned = tuple(
        (law.param_names.index(n), float(xc_fixed[law.param_names.index(n)])) for n in fixed
    )
    problem = Problem(law, Z - mu, y, delta, mu, pinned)

    xc0s = np.array([law.center(x0, mu) for x0 in x0s])
    parts = run_chunks(_starts_chunk, (problem, _SCREEN), xc0s, workers, "starts", progress)
    objs = np.concatenate([p[0] for p in parts])
    ends = np.concatenate([p[1] for p in parts])
    top = ends[np.argsort(objs)[:_N_POLISH]]
    parts = run_chunks(_starts_chunk, (problem, POLISH), top, workers, "polish", progress)
    polished = np.concatenate([p[0] for p in parts])
    best_i = int(np.argmin(polished))
    best_obj, best_xc = float(polished[best_i]), np.concatenate([p[1] for p in parts])[best_i]
    x_best = law.uncenter(best_xc, mu)
    params = law.from_internal(x_best)

    pred = np.exp(law.log_loss(x_best, Z))
    columns = ["N", "D_fp", "D_qat", "D_total", "B", *(["format"] if fmt is not None else [])]
    residuals = used[[*columns, "fusion", "loss"]].copy()
    residuals["predicted"] = pred
    residuals["rel_error"] = pred / residuals["loss"] - 1.0
    residuals["log_residual"] = np.log(pred) - y
    r2_by_bits = {
        bits_key(b): r2_score(g["loss"], g["predicted"]) for b, g in residuals.groupby("B")
    }

    by_format = {}
    if law.formats != PLAIN_FORMATS and fmt is not None:
        by_format = {
            "r2_by_format": {
                f: r2_score(g["loss"], g["predicted"]) for f, g in residuals.groupby("format")
            }
        }

    ci, boot = None, None
    if bootstrap:
        rng = np.random.default_rng(seed)
        samples = rng.integers(0, len(y), size=(bootstrap, len(y)))
        args = (problem, best_xc)
        parts = run_chunks(_bootstrap_chunk, args, samples, workers, "bootstrap", progress)
        boot = pd.DataFrame([law.from_internal(law.uncenter(x, mu)) for p in parts for x in p])
        ci = {n: (float(boot[n].quantile(0.025)), float(boot[n].quantile(0.975))) for n in boot}

    settings = {
        "starts": len(x0s),
        "start_kind": "grid" if starts is None and law.grid_starts else "latin_hypercube",
        # How many of the polished best starts reached the optimum: a convergence check.
        "polished_at_best": f"{(polished <= best_obj * 1.0001).sum()}/{len(polished)}",
        "objective": best_obj,
        "delta": delta,
        "bootstrap": bootstrap,
        "seed": seed,
        "dropped_rows": dropped,
        "fixed": sorted(fixed),
        "at_bounds": at_bounds(problem, best_xc),
        **by_format,
    }
    fitted = FittedLaw(
        law=law,
        params=params,
        r2=r2_score(residuals["loss"], pred),
        r2_by_bits=r2_by_bits,
        n_points=len(used),
        settings=settings,
        ci=ci,
        domain=domain_of(used),
    )
    return FitResult(fitted, residuals, dropped, objs, boot, problem, best_xc)
