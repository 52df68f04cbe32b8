"""A checkpoint's weights as the quantized model computes with them: each quantized Linear's
weight replaced by its fake-quantized value (α·levels[code]), the scales dropped."""

from __future__ import annotations

import torch

from qat.config import RunConfig
from qat.export.errors import ExportError
from qat.quant import QuantFormat, format_for_bits
from qat.quant.codes import dequantize, quant_codes
from qat.quant.embedding import embedding_format

SCALE_SUFFIX = ".scale"
# The layers quant.embeddings=true quantizes at its own, wider format.
EMBEDDING_LAYERS = ("tok_embeddings", "output")


def layer_format(config: RunConfig, layer: str) -> QuantFormat:
    """The number format a quantized layer of ``config``'s run was trained in."""
    if config.quant.format != "int":
        # Codes and packing exist for the integer family only; a float run would export wrongly.
        raise ExportError(
            f"export covers quant.format=int only; this run trained quant.format="
            f"{config.quant.format}"
        )
    if config.quant.embeddings and layer in EMBEDDING_LAYERS:
        return embedding_format(config.bits)
    return format_for_bits(config.bits)


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
            fmt = layer_format(config, layer)
            out[name] = dequantize(*quant_codes(tensor, scale, fmt), fmt)
    return out
