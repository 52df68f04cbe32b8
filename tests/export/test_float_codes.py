"""Float formats as stored bits: element codes are each layout's sign|exponent|mantissa pattern
(checked against tests/quant/float_formula.py and torch's float8 dtypes), block scales are E8M0
and FP8 e4m3 bytes, and dequantizing gives back the fake-quantized weights bit for bit."""

from __future__ import annotations

import pytest
import torch

from qat.export.float_codes import dequantize_float, element_values, encode_elements, float_codes
from qat.export.packing import encoding_name, pack, unpack
from qat.quant import FLOAT_FORMATS, init_scale, reference_fake_quant
from qat.quant.block_scaled import block_scales
from qat.quant.minifloat import FP4_E2M1, FP8_E4M3
from qat.quant.reference import _normalised
from tests.quant import float_formula as formula

MINIFLOATS = ("fp4_e2m1", "fp6_e2m3", "fp6_e3m2", "fp8_e4m3")


@pytest.mark.parametrize("name", MINIFLOATS)
def test_each_code_decodes_as_its_bit_layout(name):
    enc = FLOAT_FORMATS[name].element
    layout = formula.LAYOUTS[name]
    values = element_values(enc)
    half = 1 << (enc.bits - 1)
    assert values.shape == (2 * half,)
    for code in range(half):
        for sign, signed in ((1.0, code), (-1.0, code + half)):
            if code in layout.nan_codes:
                assert values[signed].isnan(), hex(signed)
            else:
                want = sign * formula.decode(layout, code)
                assert values[signed].item() == want, hex(signed)
                assert values[signed].signbit().item() == (sign < 0)  # -0.0 is code 1000…
    # Every finite value is encoded back to its own code.
    finite = torch.arange(2 * half)[~values.isnan()]
    assert torch.equal(encode_elements(values[finite], enc).long(), finite)


def test_fp8_codes_and_block_scale_bytes_are_torchs_float8_bits():
    """torch.float8_e4m3fn and float8_e8m0fnu are the OCP encodings: an independent oracle."""
    values = element_values(FP8_E4M3)
    finite = values[~values.isnan()]
    torch_bits = finite.to(torch.float8_e4m3fn).view(torch.uint8)
    assert torch.equal(encode_elements(finite, FP8_E4M3), torch_bits)

    generator = torch.Generator().manual_seed(3)
    w = torch.randn(8, 96, generator=generator) * torch.logspace(-6, 2, 8)[:, None]
    scale = torch.ones(8, 1)
    for name, size, dtype in (("mxfp4", 32, torch.float8_e8m0fnu), ("nvfp4", 16, None)):
        fmt = FLOAT_FORMATS[name]
        codes = float_codes(w, scale, fmt)
        _, _, u = _normalised(w, scale)
        want = block_scales(u, fmt.element, fmt.blocks)[:, ::size]
        assert codes.block_scales is not None and codes.block_scales.shape == (8, 96 // size)
        if dtype is not None:  # the MX byte is E8M0: 2^(byte − 127)
            decoded = codes.block_scales.view(dtype).float()
        else:  # NV: an e4m3 byte times the per-tensor scale
            assert codes.tensor_scale is not None and codes.tensor_scale.shape == (1,)
            decoded = codes.tensor_scale * codes.block_scales.view(torch.float8_e4m3fn).float()
        assert torch.equal(decoded, want), name


def weights(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A trained-looking weight with the cases that go wrong: a zero row (α at its ε clamp), a
    short last block (83 columns), an all-zero block and, for NV, a block far below the tensor's
    amax whose e4m3 scale underflows to zero; scales away from their initial value."""
    fmt = FLOAT_FORMATS[name]
    generator = torch.Generator().manual_seed(len(name))
    w = torch.randn(48, 83, generator=generator) * 0.02
    w[3] = 0.0
    w[5, :32] = 0.0
    w[6, 16:32] = 1e-9
    w[7, 0] = 50.0  # clipped at ±max beyond the minifloat grid
    scale = init_scale(w, fmt) * (0.5 + torch.rand(48, 1, generator=generator))
    return w, scale


@pytest.mark.parametrize("name", list(FLOAT_FORMATS))
def test_dequantized_codes_are_the_fake_quantized_weights_bit_for_bit(name):
    fmt = FLOAT_FORMATS[name]
    w, scale = weights(name)
    codes = float_codes(w, scale, fmt)
    assert codes.elements.dtype == torch.uint8 and codes.elements.shape == w.shape
    assert int(codes.elements.max()) < 1 << fmt.element.bits
    # Through the packed byte stream and back, as the export writes and loads it.
    encoding = encoding_name(fmt.element.bits)
    elements = unpack(pack(codes.elements, encoding), encoding, w.numel()).reshape(w.shape)
    restored = type(codes)(elements, codes.alpha, codes.block_scales, codes.tensor_scale)
    got, want = dequantize_float(restored, fmt), reference_fake_quant(w, scale, fmt)
    assert torch.equal(got.view(torch.int32), want.view(torch.int32))  # signed zeros too
    if name == "nvfp4":
        assert codes.block_scales is not None and int(codes.block_scales[6, 1]) == 0


def test_a_value_off_the_grid_is_refused():
    with pytest.raises(ValueError, match="fp4_e2m1 grid"):
        encode_elements(torch.tensor([0.75]), FP4_E2M1)
