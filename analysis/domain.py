"""The domain of a fitted law: the ranges of the runs it was fitted on, and how far a question
lies outside them.

A law fitted on 10M-parameter models says nothing reliable about 1B-parameter ones; recording
the fitted ranges in law.json lets every prediction say when it extrapolates, and by how much.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from analysis.law import FP_BITS, INT_FORMAT, bits_key, format_order

# The ranges a law records (columns of an `analysis.collect` table plus the QAT fraction).
RANGES = ("N", "D_total", "D_fp", "D_qat", "S_total", "qat_frac", "loss")
WHAT = {
    "N": "N (non-embedding parameters)",
    "D_total": "D_total (tokens)",
    "D_fp": "D_fp (FP tokens)",
    "D_qat": "D_qat (QAT tokens)",
    "S_total": "S_total (tokens per parameter byte)",
    "qat_frac": "QAT fraction",
}
# Columns a runs table may carry that name the data the loss was measured on.
_VOCAB_COLUMNS = ("data", "vocab_size")
_REL_TOL = 1e-6  # a question this close to a fitted edge is inside: counts are rounded


def domain_of(used: pd.DataFrame) -> dict[str, Any]:
    """The domain of the rows a law was fitted on: [min, max] of each of `RANGES`, the sorted bit
    widths and the vocabulary (None when the table does not say)."""
    d_total = used.D_fp + used.D_qat
    cols = {
        "N": used.N,
        "D_total": d_total,
        "D_fp": used.D_fp,
        "D_qat": used.D_qat,
        "S_total": d_total / (used.N * used.B / 8),
        "qat_frac": used.D_qat / d_total,
        "loss": used.loss,
    }
    out: dict[str, Any] = {c: [float(cols[c].min()), float(cols[c].max())] for c in RANGES}
    out["bits"] = sorted(float(b) for b in used.B.unique())
    out["vocabulary"] = vocabulary_of(used)
    if "format" in used:
        # Each number format the law was fitted on, with its bits per weight (scale overhead
        # counted); a table without a format column is of the integer family alone.
        out["formats"] = {
            f: sorted(float(b) for b in used.B[used["format"] == f].unique())
            for f in format_order(used["format"])
        }
    return out


def vocabulary_of(used: pd.DataFrame) -> str | None:
    """'<data source>, vocabulary <size>' for each distinct pair the rows carry, or None."""
    if not any(c in used for c in _VOCAB_COLUMNS):
        return None
    data = used["data"].astype(str) if "data" in used else pd.Series("", index=used.index)
    vocab = used["vocab_size"] if "vocab_size" in used else pd.Series("", index=used.index)
    names = set()
    for d, v in zip(data, vocab, strict=True):
        v = "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)
        v = v.removesuffix(".0")
        d = "" if d in ("nan", "None") else d
        if d or v:
            names.add(", ".join(p for p in (d, f"vocabulary {v}" if v else "") if p))
    return "; ".join(sorted(names)) or None


def loss_unit(domain: Mapping[str, Any] | None) -> str:
    """How a predicted loss is read: nats per token of the vocabulary the law's runs used."""
    vocab = (domain or {}).get("vocabulary")
    return f"nats/token ({vocab})" if vocab else "nats/token (vocabulary unknown)"


def _g(x: float) -> str:
    return f"{x:.3g}"


def _factor(ratio: float) -> str:
    if ratio < 2:
        return f"{100 * (ratio - 1):.2g}%"
    return f"{ratio:,.0f}x" if ratio >= 10 else f"{ratio:.2g}x"


def outside(domain: Mapping[str, Any], name: str, value: float) -> str | None:
    """One line saying how far `value` of `name` lies outside the fitted range, or None."""
    lo, hi = domain[name]
    what = WHAT.get(name, name)
    if value > hi * (1 + _REL_TOL):
        return (
            f"{name}={_g(value)} is {_factor(value / hi)} above the largest fitted {what} {_g(hi)}"
        )
    if value < lo * (1 - _REL_TOL):
        return (
            f"{name}={_g(value)} is {_factor(lo / value)} below the smallest fitted {what} {_g(lo)}"
        )
    return None


def question_warnings(
    domain: Mapping[str, Any], n: float, d_total: float, bits: float, frac: float | None
) -> list[str]:
    """Warnings for a question (N, D_total, B) and its answer's QAT fraction outside the domain."""
    checks: list[tuple[str, float]] = [("N", n), ("D_total", d_total)]
    if bits < FP_BITS:
        checks.append(("S_total", d_total / (n * bits / 8)))
    if frac is not None and bits < FP_BITS:
        checks.append(("qat_frac", frac))
    return [w for name, value in checks if (w := outside(domain, name, value))]


def nearest_inside(
    domain: Mapping[str, Any], n: float, d_total: float, bits: float
) -> tuple[float, float]:
    """(N, D_total) inside the fitted ranges of N, D_total and S_total nearest to the question
    (clipped in that order: N first, then D_total within what S_total allows at that N)."""
    n_in = min(max(n, domain["N"][0]), domain["N"][1])
    lo, hi = domain["D_total"]
    if bits < FP_BITS:
        s_lo, s_hi = domain["S_total"]
        lo, hi = max(lo, s_lo * n_in * bits / 8), min(hi, s_hi * n_in * bits / 8)
    return n_in, min(max(d_total, lo), hi) if lo <= hi else lo


def describe_bits(bits: Sequence[float]) -> str:
    return ", ".join(bits_key(b) for b in bits) if bits else "none"


def format_bits(domain: Mapping[str, Any], fmt: str = INT_FORMAT) -> list[float]:
    """The bits per weight the law was fitted on for format `fmt` (a domain without formats is
    of the integer family alone)."""
    if "formats" not in domain:
        return [float(b) for b in domain["bits"]] if fmt == INT_FORMAT else []
    return [float(b) for b in domain["formats"].get(fmt, [])]


def bits_problem(domain: Mapping[str, Any], bits: float, fmt: str = INT_FORMAT) -> str | None:
    """Why the law cannot speak for `bits` bits per weight of format `fmt`, or None if it was
    fitted on it."""
    fitted = format_bits(domain, fmt)
    if fmt != INT_FORMAT:
        if any(math.isclose(bits, b) for b in fitted):
            return None
        return f"format {fmt} at {bits_key(bits)} bits per weight: the law has no runs of it"
    if any(math.isclose(bits, b) for b in fitted):
        return None
    fp_fitted = any(b >= FP_BITS for b in fitted)
    if bits >= FP_BITS and fp_fitted:
        return None  # every width from 16 up is full precision: one and the same loss
    if bits >= FP_BITS:
        return (
            f"bits={bits_key(bits)} (full precision): the law was fitted on no full-precision runs "
            f"(bits {describe_bits(fitted)}), so its FP loss is the formula's B → ∞ limit"
        )
    return f"bits={bits_key(bits)}: the law was fitted on bits {describe_bits(fitted)} only"
