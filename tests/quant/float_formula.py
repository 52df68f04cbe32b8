"""The float formats written out from their bit layouts, element by element in plain Python.

Independent of qat.quant: every code of a layout is decoded to its value (sign, exponent field,
mantissa field; field 0 is subnormal; e4m3's all-ones code is NaN), rounding picks the nearest
decoded value by brute force (a tie goes to the code with an even mantissa), and the block
scales follow the OCP MX v1.0 and NVFP4 recipes. float32 numpy scalars where the tensor code
rounds, so results compare exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Layout:
    exp_bits: int
    man_bits: int
    bias: int
    nan_codes: tuple[int, ...] = ()  # magnitude codes (sign bit off) that are not numbers


LAYOUTS = {
    "fp4_e2m1": Layout(2, 1, 1),
    "fp6_e2m3": Layout(2, 3, 1),
    "fp6_e3m2": Layout(3, 2, 3),
    "fp8_e4m3": Layout(4, 3, 7, nan_codes=(0b1111111,)),
}
ELEMENT = {"mxfp4": "fp4_e2m1", "nvfp4": "fp4_e2m1", **{k: k for k in LAYOUTS}}
BLOCK = {"mxfp4": 32, "nvfp4": 16}


def decode(layout: Layout, code: int) -> float:
    """The value of a non-negative magnitude code (exponent field above the mantissa field)."""
    exp_field, man_field = code >> layout.man_bits, code & ((1 << layout.man_bits) - 1)
    fraction = man_field / 2**layout.man_bits
    if exp_field == 0:
        return 2.0 ** (1 - layout.bias) * fraction
    return 2.0 ** (exp_field - layout.bias) * (1 + fraction)


def magnitudes(layout: Layout) -> list[tuple[float, int]]:
    """(value, code) for every finite non-negative code, ascending."""
    n_codes = 1 << (layout.exp_bits + layout.man_bits)
    pairs = [(decode(layout, c), c) for c in range(n_codes) if c not in layout.nan_codes]
    return sorted(pairs)


def grid(name: str) -> list[float]:
    """Every finite value, negative ones included, ±0 once."""
    positive = [v for v, _ in magnitudes(LAYOUTS[ELEMENT[name]])]
    return sorted({*positive, *(-v for v in positive)})


def max_normal(name: str) -> float:
    return magnitudes(LAYOUTS[ELEMENT[name]])[-1][0]


def round_nearest_even(v: float, name: str) -> float:
    """The grid value nearest v; ties to the even code; beyond ±max saturates at ±max."""
    mags = magnitudes(LAYOUTS[ELEMENT[name]])
    a = abs(float(v))
    if a >= mags[-1][0]:
        best = mags[-1][0]
    else:
        dist = min(abs(a - m) for m, _ in mags)
        tied = [(m, c) for m, c in mags if abs(a - m) == dist]
        best = next(m for m, c in tied if c % 2 == 0) if len(tied) > 1 else tied[0][0]
    return math.copysign(best, float(v))


def mx_scale(block: np.ndarray, name: str) -> np.float32:
    """OCP MX: 2^(floor(log2(amax)) − emax_elem), emax_elem the element's top exponent; the
    exponent clamped to E8M0's range; an all-zero block gets 1 (its elements are 0 anyway)."""
    amax = float(np.max(np.abs(block)))
    if amax == 0:
        return np.float32(1.0)
    emax_elem = math.floor(math.log2(max_normal(name)))
    x = min(max(math.floor(math.log2(amax)) - emax_elem, -127), 127)
    return np.float32(2.0**x)


def nv_scales(u: np.ndarray) -> np.ndarray:
    """NVFP4: per-tensor s_t = amax/(6·448); block scale e4m3(amax_b/(6·s_t)); element scale
    s_t·s_b, per element of u."""
    six, e4m3_max = np.float32(6.0), np.float32(448.0)
    tensor_amax = np.float32(np.max(np.abs(u)))
    s_t = tensor_amax / np.float32(six * e4m3_max) if tensor_amax > 0 else np.float32(1.0)
    out = np.empty_like(u, dtype=np.float32)
    for i in range(u.shape[0]):
        for start in range(0, u.shape[1], BLOCK["nvfp4"]):
            block = u[i, start : start + BLOCK["nvfp4"]]
            amax = np.float32(np.max(np.abs(block)))
            s_b = np.float32(round_nearest_even(amax / (six * s_t), "fp8_e4m3"))
            out[i, start : start + BLOCK["nvfp4"]] = s_t * s_b
    return out


def scales(u: np.ndarray, name: str) -> np.ndarray:
    """Each element's block scale (1 for a plain minifloat)."""
    if name == "nvfp4":
        return nv_scales(u)
    out = np.ones_like(u, dtype=np.float32)
    if name == "mxfp4":
        for i in range(u.shape[0]):
            for start in range(0, u.shape[1], BLOCK[name]):
                stop = start + BLOCK[name]
                out[i, start:stop] = mx_scale(u[i, start:stop], name)
    return out


def quantize(u: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(q, s) per element: q on the element grid, s the block scale; q = 0 where s = 0."""
    s = scales(u, name)
    q = np.zeros_like(u, dtype=np.float32)
    for idx in np.ndindex(u.shape):
        if s[idx] > 0:
            q[idx] = round_nearest_even(np.float32(u[idx] / s[idx]), name)
    return q, s
