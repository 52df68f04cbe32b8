"""Minifloat element encodings (OCP FP4/FP6/FP8) and rounding onto their grids.

An encoding is sign, ``exp_bits`` exponent bits with a bias and ``man_bits`` mantissa bits; an
exponent field of zero encodes subnormals. The OCP FP4/FP6 formats have no inf or NaN, so every
code is a number; FP8 e4m3 gives its all-ones code to NaN and has no inf, so its largest value is
448 rather than 480. Rounding is to nearest, ties to even, and saturates at ±max_normal.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from qat.quant.errors import QuantConfigError


@dataclass(frozen=True)
class ElementEncoding:
    """One minifloat element: its bit layout and the largest finite value."""

    name: str
    exp_bits: int
    man_bits: int
    bias: int
    max_normal: float

    def __post_init__(self) -> None:
        if self.exp_bits < 1 or self.man_bits < 0:
            raise QuantConfigError(f"{self.name}: need exp_bits >= 1 and man_bits >= 0")
        if self.max_normal <= 0:
            raise QuantConfigError(f"{self.name}: max_normal={self.max_normal} must be > 0")

    @property
    def bits(self) -> int:
        return 1 + self.exp_bits + self.man_bits

    @property
    def min_normal_exp(self) -> int:
        """The exponent of the smallest normal (subnormals share it, without the implicit 1)."""
        return 1 - self.bias


FP4_E2M1 = ElementEncoding("fp4_e2m1", exp_bits=2, man_bits=1, bias=1, max_normal=6.0)
FP6_E2M3 = ElementEncoding("fp6_e2m3", exp_bits=2, man_bits=3, bias=1, max_normal=7.5)
FP6_E3M2 = ElementEncoding("fp6_e3m2", exp_bits=3, man_bits=2, bias=3, max_normal=28.0)
FP8_E4M3 = ElementEncoding("fp8_e4m3", exp_bits=4, man_bits=3, bias=7, max_normal=448.0)


def round_to_grid(v: Tensor, enc: ElementEncoding) -> Tensor:
    """The nearest value of ``enc`` to each element of ``v`` (ties to even), saturated at ±max.

    Exact in float32 or wider: the step of v's binade (2^(e - man_bits), at least the subnormal
    step) is a power of two, so v/step is exact and torch.round (half to even) picks the even
    mantissa on a tie. A value that rounds up to the next binade lands on its first value, which
    is on the grid too.
    """
    mag = v.abs()
    # frexp gives mag = m·2^e with m in [0.5, 1), so floor(log2(mag)) = e - 1, exactly.
    _, exp = torch.frexp(mag)
    binade = (exp - 1).clamp_min(enc.min_normal_exp)
    step = torch.ldexp(torch.ones_like(mag), (binade - enc.man_bits).to(mag.dtype))
    q = (torch.round(mag / step) * step).clamp_max(enc.max_normal)
    return torch.copysign(q, v)
