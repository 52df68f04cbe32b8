"""Float-format weights as stored bits: each element's minifloat bit pattern, the block scales'
bytes and the per-tensor scale, with the very numbers the fake quantizer produces.

An element code is the format's own bit pattern, sign | exponent | mantissa (fp4 e2m1: s eem;
fp8 e4m3: s eeee mmm, OCP's layout), so -0.0 keeps its sign. A block scale is one byte: E8M0
for MX (the biased exponent, 2^(byte − 127)), FP8 e4m3 for NV (its bit pattern; the block's
scale is then s_t · e4m3(byte), with s_t the layer's float32 tensor scale). Dequantizing
rebuilds ŵ = α · (s · element) with the reference quantizer's own float32 operations, so it
equals ``reference_fake_quant(w, scale)`` bit for bit; :func:`float_codes` checks that before
it returns.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from qat.quant.block_scaled import project
from qat.quant.formats import QuantFormat
from qat.quant.minifloat import FP8_E4M3, ElementEncoding, round_to_grid
from qat.quant.reference import _normalised, _project

E8M0_BIAS = 127


@dataclass(frozen=True)
class FloatCodes:
    """One layer of a float format, as stored."""

    elements: Tensor  # uint8 [out, in]: each element's bit pattern
    alpha: Tensor  # float32 [out, 1]: the learned per-channel scale, clamped as the quantizer does
    block_scales: Tensor | None  # uint8 [out, ceil(in / block)]: E8M0 (MX) or e4m3 (NV) bytes
    tensor_scale: Tensor | None  # float32 [1]: NV's per-tensor scale s_t


def element_values(enc: ElementEncoding) -> Tensor:
    """The value of every bit pattern of ``enc`` (float32, indexed by code), decoded from its
    fields: exponent field 0 is subnormal, m/2^man · 2^(1 − bias); else 2^(e − bias)(1 + m/2^man).
    A pattern above max_normal is no number (e4m3's s1111111 is NaN)."""
    codes = torch.arange(1 << enc.bits, dtype=torch.int64)
    magnitude = codes & ((1 << (enc.bits - 1)) - 1)
    exp_field = (magnitude >> enc.man_bits).double()
    fraction = (magnitude & ((1 << enc.man_bits) - 1)).double() / 2**enc.man_bits
    value = torch.where(
        exp_field == 0,
        fraction * 2.0 ** (1 - enc.bias),
        torch.exp2(exp_field - enc.bias) * (1 + fraction),
    )
    value = torch.where(value > enc.max_normal, torch.nan, value)
    # Exact in float32: every value has at most man_bits + 1 significant bits.
    return torch.where(codes >> (enc.bits - 1) == 1, -value, value).float()


def encode_elements(values: Tensor, enc: ElementEncoding) -> Tensor:
    """uint8 bit patterns of ``values``, each of which must be a value of ``enc`` (±0 included)."""
    half = 1 << (enc.bits - 1)
    table = element_values(enc)[:half]
    magnitudes = table[~table.isnan()]  # ascending: the exponent field sits above the mantissa
    flat = values.detach().float().reshape(-1)
    mag = flat.abs()
    found = torch.searchsorted(magnitudes, mag).clamp_(max=len(magnitudes) - 1)
    if not torch.equal(magnitudes[found], mag):
        raise ValueError(f"values do not fall on the {enc.name} grid exactly")
    codes = found + torch.signbit(flat).long() * half
    return codes.to(torch.uint8).reshape(values.shape)


def float_codes(w: Tensor, scale: Tensor, fmt: QuantFormat) -> FloatCodes:
    """The stored form of weight ``w`` [out, in] under ``scale`` [out, 1] in float format ``fmt``.

    Raises ValueError if dequantizing would not give back the fake-quantized weight bit for bit
    (it always does, unless the quantizer and this encoding drift apart).
    """
    enc, blocks = fmt.element, fmt.blocks
    if enc is None:
        raise ValueError(f"{fmt.name} is not a float format")
    wc, alpha, u = _normalised(w.detach().float(), scale.detach().float())
    block_bytes = tensor_scale = None
    if blocks is None:
        elements = round_to_grid(u, enc)
    else:
        elements, s = project(u, enc, blocks)
        first = s[:, :: blocks.block_size]  # one scale per block
        if blocks.scale == "e8m0":
            # s is a power of two: frexp gives s = 0.5 · 2^e exactly.
            block_bytes = (torch.frexp(first)[1] - 1 + E8M0_BIAS).to(torch.uint8)
        else:
            tensor_scale = _nv_tensor_scale(u, enc).reshape(1)
            # s = s_t · s_b in float32; dividing back is within an ulp of s_b, and s_b's e4m3
            # neighbours are 2^-3 apart relatively, so the rounding recovers it exactly.
            block_bytes = encode_elements(round_to_grid(first / tensor_scale, FP8_E4M3), FP8_E4M3)
    codes = FloatCodes(encode_elements(elements, enc), alpha, block_bytes, tensor_scale)
    rebuilt, expected = _quantized(codes, fmt), _project(wc, u, fmt)
    if not torch.equal(rebuilt.view(torch.int32), expected.view(torch.int32)):
        raise ValueError(f"{fmt.name} codes do not rebuild the fake-quantized weights exactly")
    return codes


def dequantize_float(codes: FloatCodes, fmt: QuantFormat) -> Tensor:
    """ŵ = α · s · element, float32 [out, in]: the fake-quantized weight."""
    return codes.alpha.float() * _quantized(codes, fmt)


def _quantized(codes: FloatCodes, fmt: QuantFormat) -> Tensor:
    """q = s · element in units of α, computed as the reference's _project computes it."""
    enc, blocks = fmt.element, fmt.blocks
    assert enc is not None  # float_codes and the loader pass float formats only
    elements = element_values(enc)[codes.elements.long()]
    if blocks is None:
        return elements
    if codes.block_scales is None:
        raise ValueError(f"{fmt.name} needs block scales")
    if blocks.scale == "e8m0":
        exponent = codes.block_scales.float() - E8M0_BIAS
        first = torch.ldexp(torch.ones_like(exponent), exponent)
    else:
        if codes.tensor_scale is None:
            raise ValueError(f"{fmt.name} needs a tensor scale")
        first = codes.tensor_scale.float() * element_values(FP8_E4M3)[codes.block_scales.long()]
    cols = elements.shape[1]
    s = first.repeat_interleave(blocks.block_size, dim=1)[:, :cols]
    return s * elements


def _nv_tensor_scale(u: Tensor, enc: ElementEncoding) -> Tensor:
    """NVFP4's per-tensor scale s_t = amax(u)/(max_elem · 448), as qat.quant.block_scaled has
    it (1 for an all-zero tensor)."""
    tensor_amax = u.abs().amax()
    denominator = tensor_amax.new_tensor(enc.max_normal * FP8_E4M3.max_normal)
    return torch.where(tensor_amax > 0, tensor_amax / denominator, 1.0).float()
