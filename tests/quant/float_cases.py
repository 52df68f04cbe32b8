"""Weights and scales on which a float-format backend must match the reference bit for bit.

Shared by the CUDA kernel's GPU test and the CPU test of its math: each case is a name (which
says what it stresses), a float32 weight and its per-row scale, built on the CPU from a fixed
seed so both tests see the same numbers.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
from torch import Tensor

from qat.quant import init_scale
from qat.quant.formats import QuantFormat, float_grid
from qat.quant.minifloat import ElementEncoding

# Shapes whose in_features are a multiple of every block (16, 32) and of the 16-byte vectors,
# ones that end on a short block or are shorter than one, and a row long enough for a thread to
# take several steps of the kernel's loop (a short one last).
SHAPES = ((1, 1), (3, 7), (5, 16), (4, 33), (6, 64), (9, 100), (33, 1000), (17, 4096), (3, 10001))


def element_of(fmt: QuantFormat) -> ElementEncoding:
    assert fmt.element is not None
    return fmt.element


def random_case(shape: tuple[int, int], fmt: QuantFormat, seed: int) -> tuple[Tensor, Tensor]:
    """Rows of different magnitudes, some weights over the clip value (scales below max|w|/max),
    exact zeros, negative zeros and subnormal weights."""
    gen = torch.Generator().manual_seed(seed)
    rows = shape[0]
    w = torch.randn(shape, generator=gen) * torch.rand((rows, 1), generator=gen).add(0.1)
    flat = w.view(-1)
    flat[::11] = 0.0
    flat[5::13] = -0.0
    flat[3::17] = torch.randn(flat[3::17].shape, generator=gen).sign() * 1e-40  # subnormal
    alpha = init_scale(w, fmt) * torch.rand((rows, 1), generator=gen).mul(0.8).add(0.5)
    return w, alpha


def tie_case(fmt: QuantFormat) -> tuple[Tensor, Tensor]:
    """u = w/α exactly on every midpoint between grid values (ties: nearest-even decides), on
    every grid value and beyond the top. α is a power of two, so w = α·u is exact. Block-scaled
    formats get the values in blocks led by max_normal (an MX scale of 1) or by a value between
    max_normal and the next power of two (clipped after the block scale)."""
    grid = float_grid(element_of(fmt))
    top = grid[-1]
    mids = [(a + b) / 2 for a, b in itertools.pairwise(grid)]
    over = [top * 1.01, -top * 1.01, top * 1.5, -top * 2.0, 1e6]
    if fmt.blocks is None:
        u = torch.tensor(mids + list(grid) + over)
    else:
        size = fmt.blocks.block_size
        values = mids + list(grid)
        blocks = []
        for leader in (top, -top, top * 1.25, 7.0):
            for start in range(0, len(values), size - 1):
                chunk = values[start : start + size - 1]
                blocks.append([leader, *chunk, *[0.0] * (size - 1 - len(chunk))])
        u = torch.tensor([v for block in blocks for v in block])
    alpha = torch.tensor([[0.5], [2.0**-3], [4.0]])
    return u * alpha, alpha


def tiny_case(fmt: QuantFormat) -> tuple[Tensor, Tensor]:
    """Weights around 2^-125 and subnormal ones with α = 1: an MX block scale at E8M0's bottom
    2^-127 (subnormal in fp32), NV scales computed in subnormal arithmetic, and w/α quotients
    whose every bit matters."""
    gen = torch.Generator().manual_seed(11)
    normal = torch.randn(4, 96, generator=gen) * 2.0**-125
    subnormal = torch.randn(4, 96, generator=gen) * 2.0**-135
    w = torch.cat([normal, subnormal, normal + subnormal])
    return w, torch.ones(w.shape[0], 1)


def zero_case() -> tuple[Tensor, Tensor]:
    """All-zero weights (NV's per-tensor scale falls back to 1 and every block scale is 0)."""
    return torch.zeros(3, 48), torch.full((3, 1), 0.25)


def clamped_scale_case(fmt: QuantFormat) -> tuple[Tensor, Tensor]:
    """Scales below SCALE_EPS (clamped in forward and backward): for NV they also set the
    per-tensor scale, so the block scales of another row's small weights underflow to 0 (their
    block is all zeros and clips nothing)."""
    w, alpha = random_case((10, 64), fmt, seed=5)
    alpha[::3] = 1e-7
    w[1, :32] *= 1e-3
    return w, alpha


def cases(fmt: QuantFormat) -> list[tuple[str, Tensor, Tensor]]:
    """(name, w, α) for every case above, float32 on the CPU."""
    named = [(f"random {r}x{c}", *random_case((r, c), fmt, seed=r * 7919 + c)) for r, c in SHAPES]
    named += [
        ("ties and over max", *tie_case(fmt)),
        ("tiny and subnormal", *tiny_case(fmt)),
        ("zeros", *zero_case()),
        ("clamped scales", *clamped_scale_case(fmt)),
    ]
    return named


def upstream(w: Tensor, seed: int) -> Tensor:
    """A dense dL/dŵ for w."""
    return torch.randn(w.shape, generator=torch.Generator().manual_seed(seed))


def one_hot_rows(w: Tensor, alpha: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(w', α', g): each row of w repeated once per column, and g one-hot at a different column
    in each copy, so each row's dL/dα is a single weight's term dq·g, summed without rounding
    in any order: the scale gradient compares bit for bit, weight by weight. The rows are
    capped at 64 columns to stay small."""
    w = w[:, :64]
    rows, cols = w.shape
    tiled = w.repeat_interleave(cols, dim=0)
    g = torch.eye(cols).repeat(rows, 1) * 1.5
    return tiled, alpha.repeat_interleave(cols, dim=0), g


def first_difference(got: Tensor, want: Tensor) -> str:
    """Where two tensors of one dtype first differ bitwise: how many, the first index with both
    values, and the largest |difference|; "equal" when none."""
    bits = {2: torch.int16, 4: torch.int32}[got.element_size()]
    differs = (got.view(bits) != want.view(bits)).flatten().nonzero()
    if differs.numel() == 0:
        return "equal"
    i = int(differs[0])
    diff = (got.double() - want.double()).abs().nan_to_num(nan=float("inf")).max().item()
    index = tuple(int(k) for k in np.unravel_index(i, tuple(got.shape)))
    return (
        f"{differs.numel()} differ; first at {index}: {got.flatten()[i].item()!r} vs reference "
        f"{want.flatten()[i].item()!r}; max |diff| {diff}"
    )


def assert_bitwise(got: Tensor, want: Tensor, what: str) -> None:
    assert (got.shape, got.dtype) == (want.shape, want.dtype), (
        f"{what}: {got.dtype} {tuple(got.shape)} vs reference {want.dtype} {tuple(want.shape)}"
    )
    report = first_difference(got, want)
    assert report == "equal", f"{what}: {report}"


def assert_one_term_rows_equal(got: Tensor, want: Tensor, what: str) -> None:
    """dL/dα of float_cases.one_hot_rows, compared by value: a row whose only term is 0 may sum
    to -0 in one order and +0 in another."""
    differs = (got != want).flatten().nonzero()
    assert differs.numel() == 0, (
        f"{what}: dL/dα of {differs.numel()} one-term rows differ; first row "
        f"{int(differs[0])}: {got.flatten()[differs[0]].item()!r} vs reference "
        f"{want.flatten()[differs[0]].item()!r}"
    )
