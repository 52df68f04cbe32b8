"""The qat law fitted in two stages, its Chinchilla part anchored on full-precision losses.

Fitted freely, the qat law can trade its Chinchilla part (α + β/D^γ + ζ/N^η) against its QAT
terms: on a grid of QAT runs alone a near-zero α with a huge ζ fits as well as a physical one.
The paper regularises the fit with the FP losses for that reason. Here the anchor is a first
stage of its own:

1. the chinchilla law is fitted to FP points: the FP-only runs, plus, for every classic QAT run,
   its FP phase's end loss `fp_loss` at (N, D_fp) (the classic FP phase ends with its own
   cooldown, so that is an FP model trained on D_fp tokens; fused runs switch before the
   cooldown and give no FP point);
2. the qat law is fitted to the classic QAT runs with the Chinchilla part held at stage 1's
   values, so only the QAT terms move.

The bootstrap resamples clusters, not rows: FP points by (N, D) and QAT runs by (N, D_total),
so that the runs a training seed shifts together (every bit width and fraction of one budget,
which share its FP trunk) are drawn together. Each resample refits both stages, so the intervals
of the QAT terms carry the Chinchilla part's uncertainty.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from analysis.collect import prepare
from analysis.errors import AnalysisError
from analysis.fit import (
    DEFAULT_DELTA,
    POLISH,
    FitResult,
    Problem,
    fit,
    one_blas_thread,
    run_chunks,
    select_rows,
)
from analysis.law import CHINCHILLA, FP_BITS, QAT, FittedLaw
from analysis.predict import same_budget

CI_LEVEL = 0.95


@dataclass
class AnchoredFit:
    """Both stages' fits; `law` is the qat law to predict with (stage 2)."""

    fp: FitResult
    qat: FitResult
    fp_points: pd.DataFrame
    bootstrap_params: pd.DataFrame | None

    @property
    def law(self) -> FittedLaw:
        return self.qat.fitted

    def at_bounds(self) -> dict[str, list[str]]:
        """Parameters that ended on a bound of their fit, per stage."""
        return {
            "fp": list(self.fp.fitted.settings["at_bounds"]),
            "qat": list(self.qat.fitted.settings["at_bounds"]),
        }


def fp_points(runs: pd.DataFrame) -> pd.DataFrame:
    """FP losses at (N, D): FP-only runs and the classic QAT runs' `fp_loss`, one row per
    (N, D, seed) (the bit widths of one seed share their FP phase, so its loss is averaged).

    Columns N, D_fp, D_qat (0), B (16), loss, fusion (False) and seed: a chinchilla-fittable table.
    """
    runs = prepare(runs)
    seed = runs["seed"].astype(str) if "seed" in runs else pd.Series("0", index=runs.index)
    fused = runs.fusion.astype(bool)
    fp_only = runs[(runs.B >= FP_BITS) & (runs.D_qat <= 0) & ~fused]
    parts = [
        pd.DataFrame(
            {
                "N": fp_only.N,
                "D": fp_only.D_total,
                "loss": fp_only.loss,
                "seed": seed[fp_only.index],
            }
        )
    ]
    if "fp_loss" in runs:
        classic = runs[(runs.B < FP_BITS) & (runs.D_fp > 0) & (runs.D_qat > 0) & ~fused]
        fp_loss = pd.to_numeric(classic.fp_loss, errors="coerce")
        ok = fp_loss.notna() & np.isfinite(fp_loss) & (fp_loss > 0)
        parts.append(
            pd.DataFrame(
                {
                    "N": classic.N[ok],
                    "D": classic.D_fp[ok],
                    "loss": fp_loss[ok],
                    "seed": seed[fp_loss[ok].index],
                }
            )
        )
    pts = pd.concat(parts, ignore_index=True)
    pts["D"] = same_budget(pts.D)
    pts = pts.groupby(["N", "D", "seed"], as_index=False).loss.mean()
    return pd.DataFrame(
        {
            "N": pts.N,
            "D_fp": pts.D,
            "D_qat": 0.0,
            "B": FP_BITS,
            "loss": pts.loss,
            "fusion": False,
            "seed": pts.seed,
        }
    )


def _cluster_counts(labels: np.ndarray, rng: np.random.Generator, n_boot: int) -> np.ndarray:
    """(n_boot, rows) multiplicities of a cluster bootstrap: clusters drawn with replacement,
    each row counted as often as its cluster was drawn."""
    codes, uniq = pd.factorize(pd.Series(labels))
    draws = rng.integers(0, len(uniq), size=(n_boot, len(uniq)))
    per_cluster = np.stack([np.bincount(d, minlength=len(uniq)) for d in draws])
    return per_cluster[:, codes]


def _anchored_chunk(
    fp: Problem, fp_xc: np.ndarray, qat: Problem, qat_xc: np.ndarray, counts: np.ndarray
) -> np.ndarray:
    """Worker: both stages refitted per resample (rows repeated by their counts), warm-started
    at the full-data optima; returns the qat law's internal (uncentred) vectors."""
    n_fp = len(fp.y)
    law = qat.law  # the qat law, with the format factors of the runs if they have several
    chin_idx = [law.param_names.index(n) for n in CHINCHILLA.param_names]
    out = []
    with one_blas_thread():
        for c in counts:
            rows_fp = np.repeat(np.arange(n_fp), c[:n_fp])
            rows_q = np.repeat(np.arange(len(qat.y)), c[n_fp:])
            x_fp = CHINCHILLA.uncenter(fp.minimise(fp_xc, POLISH, rows_fp).x, fp.mu)
            x0 = law.uncenter(qat_xc, qat.mu)
            x0[chin_idx] = x_fp
            xc0 = law.center(x0, qat.mu)
            pinned = tuple((i, float(xc0[i])) for i in chin_idx)
            xq = qat.minimise(xc0, POLISH, rows_q, pinned).x
            out.append(law.uncenter(xq, qat.mu))
    return np.array(out)


def percentile_ci(samples: pd.DataFrame, level: float = CI_LEVEL) -> dict[str, tuple[float, float]]:
    """Percentile interval of each column."""
    q = (1 - level) / 2
    return {c: (float(samples[c].quantile(q)), float(samples[c].quantile(1 - q))) for c in samples}


def fit_anchored(
    runs: pd.DataFrame,
    *,
    starts: int | None = None,
    fp_starts: int | None = None,
    delta: float = DEFAULT_DELTA,
    bootstrap: int = 0,
    seed: int = 0,
    workers: int | None = None,
    progress: bool = False,
) -> AnchoredFit:
    """Fit the qat law to `runs` (an `analysis.collect` table) with its Chinchilla part anchored
    on the FP points (see the module's docstring); `bootstrap` cluster resamples give 95%
    percentile intervals (`law.ci`). `starts`/`fp_starts`: multi-starts of each stage (None:
    the law's default)."""
    workers = (os.cpu_count() or 1) if workers is None else workers
    pts = fp_points(runs)
    if len(pts) < len(CHINCHILLA.param_names):
        raise AnalysisError(
            f"{len(pts)} FP points (FP-only runs and classic runs' fp_loss); the FP anchor needs "
            f">= {len(CHINCHILLA.param_names)}"
        )
    kw: dict[str, Any] = {"delta": delta, "seed": seed, "workers": workers, "progress": progress}
    fp = fit(pts, "chinchilla", starts=fp_starts, **kw)
    qat = fit(runs, "qat", starts=starts, fixed=fp.fitted.params, **kw)
    qat.fitted.settings["anchor"] = {
        "fp_points": len(pts),
        "fp_r2": fp.fitted.r2,
        "fp_at_bounds": fp.fitted.settings["at_bounds"],
    }
    boot = None
    if bootstrap:
        used, _ = select_rows(QAT, prepare(runs))
        # A training seed shifts every run of one (N, D_total) together (they share its FP
        # trunk), so those runs are one cluster; an FP point is its own (N, D) cluster.
        budget = used.N.map(repr) + "|" + same_budget(used.D_total).map(repr)
        trunk = pts.N.map(repr) + "|" + pts.D_fp.map(repr)
        rng = np.random.default_rng(seed)
        counts = np.concatenate(
            [
                _cluster_counts(trunk.to_numpy(), rng, bootstrap),
                _cluster_counts(budget.to_numpy(), rng, bootstrap),
            ],
            axis=1,
        )
        assert fp.problem is not None and qat.problem is not None
        args = (fp.problem, fp.best_centred, qat.problem, qat.best_centred)
        parts = run_chunks(_anchored_chunk, args, counts, workers, "bootstrap", progress)
        boot = pd.DataFrame([qat.fitted.law.from_internal(x) for p in parts for x in p])
        qat.fitted.ci = percentile_ci(boot)
        qat.fitted.settings["bootstrap"] = bootstrap
        qat.fitted.settings["bootstrap_kind"] = (
            "clusters: FP points by (N, D), QAT runs by (N, D_total)"
        )
    qat.fitted.settings["fit"] = "fp-anchored two-stage"
    return AnchoredFit(fp, qat, pts, boot)
