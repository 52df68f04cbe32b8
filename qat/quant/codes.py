"""Integer codes of fake-quantized weights: ŵ = α·levels[code], with the very numbers the
fake quantizer produces.

A code is the index of a weight's level in :func:`qat.quant.formats.levels` (ascending). The
level table is computed with the reference quantizer's own float32 operations, so that
``dequantize(codes, α)`` equals ``reference_fake_quant(w, scale)`` bit for bit.
"""

from __future__ import annotations

import torch
from torch import Tensor

from qat.quant.formats import QuantFormat, level_count, levels
from qat.quant.reference import _normalised, _project


def level_table(fmt: QuantFormat) -> Tensor:
    """The levels in units of α, float32, ascending, as the reference quantizer computes them."""
    if fmt.family == "seq":
        n, shift = fmt.n_levels, fmt.shift
        assert n is not None  # QuantFormat.__post_init__ requires it for SEQ
        count = level_count(fmt)
        lo = round(levels(fmt)[0] * n - shift)
        # (k + shift) / n in float32 tensor arithmetic: the same rounding as _project's.
        integers = torch.arange(lo, lo + count, dtype=torch.float32)
        return (integers + shift) / n
    return torch.tensor(levels(fmt), dtype=torch.float32)


def quant_codes(w: Tensor, scale: Tensor, fmt: QuantFormat) -> tuple[Tensor, Tensor]:
    """(codes uint8 [out, in], α float32 [out, 1]) of weight ``w`` under ``scale``.

    Raises ValueError if a projected value is not exactly one of the table's levels (it never
    is, unless the quantizer and this table drift apart).
    """
    wc, alpha, u = _normalised(w.detach().float(), scale.detach().float())
    q = _project(wc, u, fmt)
    table = level_table(fmt)
    codes = torch.searchsorted(table, q.contiguous()).clamp_(max=len(table) - 1)
    if not torch.equal(table[codes], q):
        raise ValueError(f"weights do not fall on the {fmt.name} levels exactly")
    return codes.to(torch.uint8), alpha


def dequantize(codes: Tensor, alpha: Tensor, fmt: QuantFormat) -> Tensor:
    """ŵ = α·levels[codes], float32: the fake-quantized weight."""
    return alpha.float() * level_table(fmt)[codes.long()]
