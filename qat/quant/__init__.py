"""Quantization-aware training: weight fake quantization for Linear layers, in the ParetoQ
integer family or a float format (minifloats, MXFP4, NVFP4)."""

from qat.quant.embedding import (
    EMBEDDING_MIN_BITS,
    QuantEmbedding,
    embedding_format,
    quantize_embeddings,
)
from qat.quant.errors import QuantConfigError
from qat.quant.formats import (
    ALLOWED_FORMATS,
    FLOAT_FORMATS,
    FP_BITS,
    INT_FORMAT,
    SCALE_EPS,
    QuantFormat,
    as_format,
    format_for_bits,
    init_scale,
    is_full_precision,
    level_count,
    levels,
    resolve_format,
)
from qat.quant.kernels import register_cuda_backend
from qat.quant.linear import QuantLinear
from qat.quant.ops import (
    check_kernel_name,
    fake_quant,
    known_kernels,
    register_backend,
    resolve_kernel,
)
from qat.quant.prepare import DEFAULT_EXCLUDE, is_quantized, quant_parameters, quantize_model
from qat.quant.reference import FakeQuantFunction, reference_fake_quant

# The CUDA kernel registers itself as the "cuda" backend where torch has CUDA; nothing is
# compiled until a CUDA tensor first uses it.
register_cuda_backend()

__all__ = [
    "ALLOWED_FORMATS",
    "DEFAULT_EXCLUDE",
    "EMBEDDING_MIN_BITS",
    "FLOAT_FORMATS",
    "FP_BITS",
    "INT_FORMAT",
    "SCALE_EPS",
    "FakeQuantFunction",
    "QuantConfigError",
    "QuantEmbedding",
    "QuantFormat",
    "QuantLinear",
    "as_format",
    "check_kernel_name",
    "embedding_format",
    "fake_quant",
    "format_for_bits",
    "init_scale",
    "is_full_precision",
    "is_quantized",
    "known_kernels",
    "level_count",
    "levels",
    "quant_parameters",
    "quantize_embeddings",
    "quantize_model",
    "reference_fake_quant",
    "register_backend",
    "resolve_format",
    "resolve_kernel",
]
