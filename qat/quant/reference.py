"""Pure-PyTorch fake quantization with straight-through-estimator gradients (all families).

Float formats round u = w/α onto their minifloat grid (qat.quant.minifloat); block-scaled ones
first divide by each block's computed scale s (qat.quant.block_scaled), so q(u) = s·e2m1(u/s)
and the clip range is ±s·max_normal, element by element.

This is the ground truth that any faster backend must match. It runs on any device and any
float dtype: the math is done in at least float32, the output has w's dtype and the scale
gradient has the scale's dtype and shape.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from qat.quant.block_scaled import block_scales, project
from qat.quant.formats import SCALE_EPS, SEQ_CLIP, QuantFormat, grad_scale
from qat.quant.minifloat import round_to_grid

Bound = float | Tensor


def _normalised(w: Tensor, scale: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(w, α, u = w/α) in the compute dtype (at least float32), α clamped away from zero."""
    compute = torch.promote_types(w.dtype, torch.float32)
    alpha = scale.to(compute).clamp_min(SCALE_EPS)
    wc = w.to(compute)
    return wc, alpha, wc / alpha


def _project(w: Tensor, u: Tensor, fmt: QuantFormat) -> Tensor:
    """q(u): the quantized value in units of α."""
    if fmt.family == "binary":
        # sign(0) is +1 so a row has exactly two levels, never a third at zero. Taken from w,
        # not u: a tiny w/α can underflow to -0.0 and lose its sign.
        return torch.where(w >= 0, 1.0, -1.0).to(w.dtype)
    if fmt.family == "seq":
        n, shift = fmt.n_levels, fmt.shift
        assert n is not None  # QuantFormat.__post_init__ requires it for SEQ
        return (torch.round(u.clamp(-SEQ_CLIP, SEQ_CLIP) * n - shift) + shift) / n
    if fmt.element is not None:
        if fmt.blocks is None:
            return round_to_grid(u, fmt.element)
        q, s = project(u, fmt.element, fmt.blocks)
        return s * q
    return torch.round(u).clamp(fmt.qn, fmt.qp)


def _clip_bounds(fmt: QuantFormat) -> tuple[float, float]:
    """The u range inside which the STE passes the weight gradient through."""
    if fmt.family == "binary":
        return -1.0, 1.0
    if fmt.family == "seq":
        return -SEQ_CLIP, SEQ_CLIP
    return fmt.qn, fmt.qp


def _element_bounds(u: Tensor, fmt: QuantFormat) -> tuple[Bound, Bound]:
    """:func:`_clip_bounds`, per element for block-scaled formats: ±s·max with s u's block scale."""
    if fmt.element is None or fmt.blocks is None:
        return _clip_bounds(fmt)
    s = block_scales(u, fmt.element, fmt.blocks)
    # A zero block scale (NV underflow) rounds its whole block to 0: no clipping there.
    hi = torch.where(s > 0, s * fmt.qp, torch.inf)
    return -hi, hi


class FakeQuantFunction(torch.autograd.Function):
    """ŵ = α·q(w/α) forward; STE for w and the LSQ-style gradient for α backward."""

    @staticmethod
    def forward(
        ctx: Any, w: Tensor, scale: Tensor, fmt: QuantFormat, weight_numel: int | None = None
    ) -> Tensor:
        """``weight_numel``: the size of the weight the rows belong to, when ``w`` stacks the
        rows of several equal weights (a pack's members); it sets α's gradient scale."""
        # Save the inputs, not u: they are parameters anyway, and recomputing u is cheap.
        ctx.save_for_backward(w, scale)
        ctx.fmt = fmt
        ctx.weight_numel = weight_numel or w.numel()
        wc, alpha, u = _normalised(w, scale)
        return (alpha * _project(wc, u, fmt)).to(w.dtype)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:
        w, scale = ctx.saved_tensors
        fmt: QuantFormat = ctx.fmt
        wc, _, u = _normalised(w, scale)
        g = grad_out.to(u.dtype)
        lo, hi = _element_bounds(u, fmt)
        small, big = u < lo, u > hi
        mid = ~(small | big)

        grad_w = grad_scale_out = None
        if ctx.needs_input_grad[0]:
            grad_w = torch.where(mid, g, 0.0).to(w.dtype)
        if ctx.needs_input_grad[1]:
            q = _project(wc, u, fmt)
            if fmt.family == "binary":
                # ŵ = α·sign(w) is linear in α everywhere, so dŵ/dα = sign(w) for every weight.
                dq = q
            else:
                # Clipped weights sit at α·lo / α·hi; inside, round() is passed straight through
                # (block scales are constants, as the rounding is).
                # A clipped q is Qn/Qp (SEQ's clip range ends just short of them), or ±s·max.
                q_lo, q_hi = (lo, hi) if fmt.blocks is not None else (fmt.qn, fmt.qp)
                dq = torch.where(small, q_lo, torch.where(big, q_hi, q - u))
            row = (dq * g).sum(dim=1, keepdim=True) * grad_scale(ctx.weight_numel, fmt)
            grad_scale_out = row.to(scale.dtype).reshape(scale.shape)
        return grad_w, grad_scale_out, None, None


def reference_fake_quant(w: Tensor, scale: Tensor, fmt: QuantFormat) -> Tensor:
    """The reference backend: differentiable fake quantization of w with per-row scale."""
    return FakeQuantFunction.apply(w, scale, fmt)
