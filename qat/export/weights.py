"""A checkpoint's weights as the quantized model computes with them: each quantized Linear's
weight replaced by its fake-quantized value (α·levels[code]), the scales dropped."""

from __future__ import annotations

import torch

from qat.quant import format_for_bits, is_full_precision
from qat.quant.codes import dequantize, quant_codes

SCALE_SUFFIX = ".scale"


def dequantized_state(state: dict[str, torch.Tensor], bits: float) -> dict[str, torch.Tensor]:
    if is_full_precision(bits):
        return {k: v for k, v in state.items() if not k.endswith(SCALE_SUFFIX)}
    fmt = format_for_bits(bits)
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if name.endswith(SCALE_SUFFIX):
            continue
        scale = state.get(name.removesuffix(".weight") + SCALE_SUFFIX)
        out[name] = tensor if scale is None else dequantize(*quant_codes(tensor, scale, fmt), fmt)
    return out
