"""Integer codes and bit-packing: every bit width round-trips, and dequantized weights are the
fake-quantized ones bit for bit."""

from __future__ import annotations

import pytest
import torch

from qat.export.packing import TRITS, encoding_name, pack, packed_size, unpack
from qat.quant import format_for_bits, init_scale, level_count, reference_fake_quant
from qat.quant.codes import dequantize, quant_codes

BITS = (1, 1.58, 2, 3, 4, 6, 8)


def encodings(bits: float) -> list[str]:
    return [TRITS, "bits2"] if bits == 1.58 else [encoding_name(int(bits))]


@pytest.mark.parametrize("bits", BITS)
def test_dequantized_codes_are_the_fake_quantized_weights_bit_for_bit(bits):
    fmt = format_for_bits(bits)
    generator = torch.Generator().manual_seed(int(bits * 100))
    w = torch.randn(48, 83, generator=generator) * 0.02
    # Trained scales sit anywhere, not at their initial value; a zero row hits the ε clamp.
    w[3] = 0.0
    scale = init_scale(w, fmt) * (0.5 + torch.rand(48, 1, generator=generator))
    codes, alpha = quant_codes(w, scale, fmt)
    assert codes.dtype == torch.uint8 and int(codes.max()) < level_count(fmt)
    assert torch.equal(dequantize(codes, alpha, fmt), reference_fake_quant(w, scale, fmt))


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("count", [1, 7, 1000, 4099])
def test_packing_round_trips_every_bit_width(bits, count):
    levels = 3 if bits == 1.58 else 2 ** int(bits)
    codes = torch.randint(0, levels, (count,), dtype=torch.uint8)
    codes[0] = levels - 1  # the top code always occurs
    for encoding in encodings(bits):
        packed = pack(codes, encoding)
        assert packed.dtype == torch.uint8 and packed.numel() == packed_size(count, encoding)
        assert torch.equal(unpack(packed, encoding, count), codes)


def test_sizes_on_disk_are_bits_over_eight():
    assert packed_size(1000, "bits1") == 125
    assert packed_size(1000, "bits3") == 375
    assert packed_size(1000, "bits6") == 750
    assert packed_size(1000, TRITS) == 200  # 1.6 bits a weight
    assert packed_size(1001, "bits4") == 501


def test_codes_that_do_not_fit_are_refused():
    with pytest.raises(ValueError, match="3 bits"):
        pack(torch.tensor([8], dtype=torch.uint8), "bits3")
    with pytest.raises(ValueError, match="trit"):
        pack(torch.tensor([3], dtype=torch.uint8), TRITS)
    with pytest.raises(ValueError, match="bytes"):
        unpack(torch.zeros(3, dtype=torch.uint8), "bits4", 7)
