"""Block scales of the MX and NV formats, computed from the weights (not learned).

Each row is cut into blocks of ``block_size`` consecutive inputs (the last block of a row may be
short). A block's elements are stored as minifloats relative to one shared scale:

* MX (OCP Microscaling v1.0): the scale is a power of two (E8M0), 2^(floor(log2 amax) − emax),
  with emax the element format's largest exponent (2 for e2m1), clamped to E8M0's [−127, 127];
  elements above max_normal after scaling saturate.
* NV (NVIDIA NVFP4): a per-tensor scale s_t = amax(tensor)/(6·448) makes the block scales fit
  FP8 e4m3; each block stores s_b = e4m3(amax(block)/(6·s_t)), and its elements are
  e2m1(v/(s_t·s_b)). A block whose s_b underflows to zero is all zeros.

The scales are constants for autograd: gradients pass through them as through the rounding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from qat.quant.errors import QuantConfigError
from qat.quant.minifloat import FP8_E4M3, ElementEncoding, round_to_grid

ScaleEncoding = Literal["e8m0", "e4m3_per_tensor"]
E8M0_MIN_EXP, E8M0_MAX_EXP = -127, 127


@dataclass(frozen=True)
class BlockScaling:
    """How a block's shared scale is stored: ``e8m0`` (MX) or ``e4m3_per_tensor`` (NV)."""

    block_size: int
    scale: ScaleEncoding
    scale_bits: int  # bits stored per block for its scale

    def __post_init__(self) -> None:
        if self.block_size < 1 or self.scale not in ("e8m0", "e4m3_per_tensor"):
            raise QuantConfigError(
                f"block_size={self.block_size}, scale={self.scale!r}: need block_size >= 1 "
                "and scale 'e8m0' or 'e4m3_per_tensor'"
            )


MX_BLOCKS = BlockScaling(block_size=32, scale="e8m0", scale_bits=8)
NV_BLOCKS = BlockScaling(block_size=16, scale="e4m3_per_tensor", scale_bits=8)


def _blocks(u: Tensor, size: int) -> Tensor:
    """[rows, cols] → [rows, n_blocks, size], the last block zero-padded (amax stays as is)."""
    pad = -u.shape[1] % size
    return F.pad(u, (0, pad)).reshape(u.shape[0], -1, size)


def _largest_exponent(enc: ElementEncoding) -> int:
    """floor(log2(max_normal)): the exponent of the element format's top binade."""
    return math.frexp(enc.max_normal)[1] - 1


def block_scales(u: Tensor, enc: ElementEncoding, blocks: BlockScaling) -> Tensor:
    """Each element's block scale (the product of block and per-tensor scale), shape of ``u``."""
    u = u.detach()
    rows, cols = u.shape
    amax = _blocks(u, blocks.block_size).abs().amax(dim=2, keepdim=True)
    if blocks.scale == "e8m0":
        _, exp = torch.frexp(amax)
        shared = (exp - 1 - _largest_exponent(enc)).clamp(E8M0_MIN_EXP, E8M0_MAX_EXP)
        # An all-zero block has frexp exponent 0; any scale works there, the elements are 0.
        shared = torch.where(amax > 0, shared, torch.zeros_like(shared))
        scale = torch.ldexp(torch.ones_like(amax), shared.to(amax.dtype))
    else:
        tensor_amax = u.abs().amax()
        # Divided by a tensor: torch on CUDA turns a division by a Python number into a
        # multiply by its rounded reciprocal, which would make s_t differ from the CPU's by an ulp.
        # Filled on the device, not copied from the host: a CUDA graph can capture a fill.
        denominator = torch.full_like(tensor_amax, enc.max_normal * FP8_E4M3.max_normal)
        per_tensor = torch.where(tensor_amax > 0, tensor_amax / denominator, 1.0)
        scale = per_tensor * round_to_grid(amax / (enc.max_normal * per_tensor), FP8_E4M3)
    expanded = scale.expand(rows, amax.shape[1], blocks.block_size)
    return expanded.reshape(rows, -1)[:, :cols]


def project(u: Tensor, enc: ElementEncoding, blocks: BlockScaling) -> tuple[Tensor, Tensor]:
    """(q, s): the block-scaled value s·q of each u, with q on the element grid and s its block
    scale. Where s is 0 (an NV block scale that underflowed) q is 0."""
    s = block_scales(u, enc, blocks)
    safe = torch.where(s > 0, s, 1.0)
    q = torch.where(s > 0, round_to_grid(u / safe, enc), 0.0)
    return q, s
