"""The pretrained user's question: a model of N parameters already trained on D_fp tokens in full
precision — how many QAT tokens D_qat does it deserve at B bits?

From a fitted law L(N, D_fp, D_qat, B): the loss after D_qat QAT tokens over a range of D_qat,
the D_qat at which the quantized model comes within x% of the FP model's loss L(N, D_fp) (the
law's Chinchilla part, the same fit), and where more QAT stops paying: the first D_qat from which
doubling it closes less than 0.5% of the loss of the quantization gap, the loss above an FP model
trained on the same D_fp + D_qat tokens. Beyond that point extra tokens buy about what more FP
training would, not better quantization.

    python -m analysis.predict --law DIR/law.json --pretrained-tokens 2e12 --n 1.2e9 --bits 4
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy.optimize import brentq

from analysis.errors import AnalysisError
from analysis.law import CHINCHILLA, FP_BITS, INT_FORMAT, FittedLaw

# The D_qat range scanned, as fractions of D_fp: 1e-5 … 10.
_RATIOS = np.geomspace(1e-5, 10.0, 121)
DEFAULT_WITHIN = (10.0, 5.0, 2.0, 1.0)  # percent above the FP loss
DEFAULT_MIN_GAIN = 0.005  # a doubling of D_qat that closes less than 0.5% of the loss of the gap


@dataclass(frozen=True)
class PretrainedPlan:
    fp_loss: float
    curve: pd.DataFrame  # D_qat, D_qat/D_fp, loss, gap_pct (above the FP loss)
    within: dict[float, float]  # percent → D_qat (inf: not within reach of the scanned range)
    stops_paying: float  # D_qat (inf: every doubling in the range still pays)


def qat_loss(
    fitted: FittedLaw, n: float, d_fp: float, bits: float, d_qat: ArrayLike, fmt: str | None = None
) -> np.ndarray:
    return np.asarray(fitted.loss(n, d_fp, d_qat, bits, fmt), dtype=float)


def plan_pretrained(
    fitted: FittedLaw,
    n: float,
    d_fp: float,
    bits: float,
    within: Sequence[float] = DEFAULT_WITHIN,
    min_gain: float = DEFAULT_MIN_GAIN,
    fmt: str | None = None,
) -> PretrainedPlan:
    """The plan for a B-bit model of format `fmt` (default the law's base format; B its bits per
    weight, block scales counted)."""
    if fitted.law.fp_only:
        raise AnalysisError(f"law {fitted.law.name!r} has no QAT terms; fit one with --law qat")
    for name, value in (("n", n), ("pretrained_tokens", d_fp), ("bits", bits)):
        if not (math.isfinite(value) and value > 0):
            raise AnalysisError(f"{name}={value}; must be a finite number > 0")
    if bits >= FP_BITS:
        raise AnalysisError(f"bits={bits}; QAT needs bits < {FP_BITS:g}")
    if not 0 < min_gain < 1:
        raise AnalysisError(f"min_gain={min_gain}; must be in (0, 1)")
    # The FP model's loss: the law's Chinchilla part, as analysis.predict's full precision.
    fp = float(_fp_loss(fitted, n, d_fp))
    d_qat = _RATIOS * d_fp
    losses = qat_loss(fitted, n, d_fp, bits, d_qat, fmt)
    curve = pd.DataFrame(
        {"D_qat": d_qat, "D_qat/D_fp": _RATIOS, "loss": losses, "gap_pct": 100 * (losses / fp - 1)}
    )
    return PretrainedPlan(
        fp_loss=fp,
        curve=curve,
        within={
            pct: _tokens_within(fitted, n, d_fp, bits, fp * (1 + pct / 100), fmt) for pct in within
        },
        stops_paying=_stops_paying(fitted, n, d_fp, bits, min_gain, fmt),
    )


def _tokens_within(
    fitted: FittedLaw, n: float, d_fp: float, bits: float, target: float, fmt: str | None
) -> float:
    """The least D_qat in the scanned range with predicted loss ≤ target (inf if none)."""

    def gap(log_d: float) -> float:
        return float(qat_loss(fitted, n, d_fp, bits, np.asarray(math.exp(log_d)), fmt)) - target

    logs = np.log(_RATIOS * d_fp)
    gaps = [gap(x) for x in logs]
    if gaps[0] <= 0:
        return float(math.exp(logs[0]))
    for i in range(1, len(logs)):
        if gaps[i] <= 0:
            return math.exp(brentq(gap, logs[i - 1], logs[i], xtol=1e-9))
    return math.inf


def _fp_loss(fitted: FittedLaw, n: float, d_total: ArrayLike) -> np.ndarray:
    # The FP model's loss: the law's Chinchilla part, as analysis.predict's full precision.
    fp_params = fitted.law.fp_part(fitted.params)
    return np.asarray(CHINCHILLA.loss(fp_params, n, d_total, 0.0, FP_BITS), dtype=float)


def _stops_paying(
    fitted: FittedLaw, n: float, d_fp: float, bits: float, min_gain: float, fmt: str | None
) -> float:
    """The first scanned D_qat from which doubling it closes less than ``min_gain`` of the loss
    of the quantization gap (inf if every doubling in the range still does)."""
    d_qat = _RATIOS * d_fp

    def gap(d: np.ndarray) -> np.ndarray:
        return qat_loss(fitted, n, d_fp, bits, d, fmt) - _fp_loss(fitted, n, d_fp + d)

    closed = gap(d_qat) - gap(2 * d_qat)
    small = np.nonzero(closed < min_gain * qat_loss(fitted, n, d_fp, bits, d_qat, fmt))[0]
    return float(d_qat[small[0]]) if small.size else math.inf


def answer(
    law_path: str,
    n: float,
    d_fp: float,
    bits: float,
    as_json: bool,
    unit: str = "nats/token",
    fmt: str = INT_FORMAT,
) -> int:
    """Print the plan of ``python -m analysis.predict --pretrained-tokens``; the exit status."""
    from analysis.law import load_law

    try:
        plan = plan_pretrained(load_law(law_path), n, d_fp, bits, fmt=fmt)
    except AnalysisError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if as_json:
        print(
            json.dumps(
                {
                    "fp_loss": plan.fp_loss,
                    "loss_unit": unit,
                    "within_pct": {f"{k:g}": v for k, v in plan.within.items()},
                    "stops_paying": plan.stops_paying,
                    "curve": plan.curve.to_dict(orient="list"),
                }
            )
        )
        return 0
    print(f"FP loss after {d_fp:.3g} pretraining tokens (N={n:.3g}): {plan.fp_loss:.4f} {unit}")
    model = f"{bits:g}-bit" if fmt == INT_FORMAT else f"{fmt} ({bits:g} bits per weight)"
    print(f"{model} loss after D_qat QAT tokens, in {unit}:")
    rows = plan.curve.iloc[::10]
    print(rows.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    for pct, tokens in plan.within.items():
        print(f"within {pct:g}% of the FP loss: D_qat = {_tokens(tokens)}")
    print(
        f"more QAT stops paying (a doubling closes < {100 * DEFAULT_MIN_GAIN:g}% of the loss "
        "of the quantization gap) "
        f"from D_qat = {_tokens(plan.stops_paying)}"
    )
    return 0


def _tokens(value: float) -> str:
    if math.isinf(value):
        return f"beyond {_RATIOS[-1]:g} × D_fp (not within reach)"
    return f"{value:.3g}"
