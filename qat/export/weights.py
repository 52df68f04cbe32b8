"""A checkpoint's weights as the quantized model computes with them: each quantized Linear's
weight replaced by its fake-quantized value (α·levels[code] for the integer family, α·s·element
for a float format), the scales dropped."""

from __future__ import annotations

import torch

from qat.config import RunConfig
from qat.export.float_codes import dequantize_float, float_codes
from qat.quant import QuantFormat, format_for_bits, resolve_format
from qat.quant.codes import dequantize, quant_codes
from qat.quant.embedding import embedding_format

SCALE_SUFFIX = ".scale"
# The layers quant.embeddings=true quantizes at its own, wider format.
EMBEDDING_LAYERS = ("tok_embeddings", "output")


def layer_format(config: RunConfig, layer: str) -> QuantFormat:
    """The number format a quantized layer of ``config``'s run was trained in."""
    if config.quant.format != "int":
        # The config refuses quant.embeddings with a float format: every quantized layer has it.
        return resolve_format(config.bits, config.quant.format)
    if config.quant.embeddings and layer in EMBEDDING_LAYERS:
        return embedding_format(config.bits)
    return format_for_bits(config.bits)


def quantized_weight(weight: torch.Tensor, scale: torch.Tensor, fmt: QuantFormat) -> torch.Tensor:
    """The fake-quantized weight, rebuilt from the codes export stores (so it is what a packed
    folder loads back)."""
    if fmt.element is not None:
        return dequantize_float(float_codes(weight, scale, fmt), fmt)
    return dequantize(*quant_codes(weight, scale, fmt), fmt)


def dequantized_state(state: dict[str, torch.Tensor], config: RunConfig) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if name.endswith(SCALE_SUFFIX):
            continue
        layer = name.removesuffix(".weight")
        scale = state.get(layer + SCALE_SUFFIX)
        if scale is None:
            out[name] = tensor
        else:
            out[name] = quantized_weight(tensor, scale, layer_format(config, layer))
    return out
