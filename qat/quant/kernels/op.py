"""The CUDA fake-quant kernels as torch.library custom ops, with autograd and fake impls.

``qat::fake_quant_fwd(w, scale, family, params) -> ŵ`` and
``qat::fake_quant_bwd(grad, w, scale, family, params) -> (dL/dw, dL/dα)``. The ops are defined
here in Python, so defining them compiles nothing; their CUDA implementations call the
extension, which is built on the first real call (build.py). torch.compile sees the ops as
single nodes: it traces them through the fake impls and calls the kernels at run time.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from qat.quant.formats import SCALE_EPS, QuantFormat
from qat.quant.kernels.build import extension, find_nvcc
from qat.quant.reference import _clip_bounds

FAMILY_CODES = {"binary": 0, "seq": 1, "lsq": 2}  # the Family enum of fake_quant.cu
# The FloatKind enum of float_math.cuh, by block-scale encoding (None: a plain minifloat).
FLOAT_KIND_CODES = {None: 3, "e8m0": 4, "e4m3_per_tensor": 5}
DTYPES = (torch.float32, torch.bfloat16)
# Looked up once: torch.compile traces cuda_available, and a module constant is something it
# can guard on, where a file-system search is not.
NVCC_FOUND = find_nvcc() is not None


def family_code(fmt: QuantFormat) -> int:
    """The kernel's family code: FAMILY_CODES for the integer family, FLOAT_KIND_CODES for a
    float format (by how its blocks are scaled)."""
    if fmt.element is None:
        return FAMILY_CODES[fmt.family]
    return FLOAT_KIND_CODES[fmt.blocks.scale if fmt.blocks is not None else None]


def format_params(fmt: QuantFormat) -> list[float]:
    """The kernel's parameters for one format: [n, shift, qn, qp, lo, hi, eps] for the integer
    family, [man_bits, min_normal_exp, max_normal, block_size (0: none), eps] for a float one."""
    element = fmt.element
    if element is not None:
        block = fmt.blocks.block_size if fmt.blocks is not None else 0
        return [
            float(element.man_bits),
            float(element.min_normal_exp),
            element.max_normal,
            float(block),
            SCALE_EPS,
        ]
    lo, hi = _clip_bounds(fmt)
    return [fmt.n_levels or 0.0, fmt.shift, fmt.qn, fmt.qp, lo, hi, SCALE_EPS]


@torch.library.custom_op("qat::fake_quant_fwd", mutates_args=(), device_types="cuda")
def fake_quant_fwd(w: Tensor, scale: Tensor, family: int, params: list[float]) -> Tensor:
    """ŵ = α·q(w/α) per row, in w's dtype (contiguous)."""
    return extension().forward(w, scale, family, params)


@fake_quant_fwd.register_fake
def _(w: Tensor, scale: Tensor, family: int, params: list[float]) -> Tensor:
    return w.new_empty(w.shape)  # the kernel writes a fresh contiguous tensor


@torch.library.custom_op("qat::fake_quant_bwd", mutates_args=(), device_types="cuda")
def fake_quant_bwd(
    grad: Tensor, w: Tensor, scale: Tensor, family: int, params: list[float]
) -> tuple[Tensor, Tensor]:
    """(dL/dw in w's dtype, dL/dα in α's dtype and shape) from dL/dŵ, in one pass."""
    return extension().backward(grad, w, scale, family, params)


@fake_quant_bwd.register_fake
def _(
    grad: Tensor, w: Tensor, scale: Tensor, family: int, params: list[float]
) -> tuple[Tensor, Tensor]:
    return w.new_empty(w.shape), scale.new_empty(scale.shape)


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
    w, scale, family, params = inputs
    ctx.save_for_backward(w, scale)
    ctx.family, ctx.params = family, params


def _backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:
    w, scale = ctx.saved_tensors
    # The fused pass always yields both: a weight that needs no gradient (a frozen layer) is
    # too rare to justify a second kernel variant.
    grad_w, grad_scale = fake_quant_bwd(grad, w, scale, ctx.family, ctx.params)
    return (
        grad_w if ctx.needs_input_grad[0] else None,
        grad_scale if ctx.needs_input_grad[1] else None,
        None,
        None,
    )


fake_quant_fwd.register_autograd(_backward, setup_context=_setup_context)


def cuda_fake_quant(w: Tensor, scale: Tensor, fmt: QuantFormat) -> Tensor:
    """The "cuda" backend of qat.quant.fake_quant."""
    return fake_quant_fwd(w, scale, family_code(fmt), format_params(fmt))


def cuda_available(w: Tensor) -> bool:
    """A CUDA fp32/bf16 tensor on a machine with nvcc (the build itself waits for first use)."""
    return w.is_cuda and w.dtype in DTYPES and NVCC_FOUND
