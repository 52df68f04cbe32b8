"""The LM head and cross-entropy of a pack as one chunked operation.

A pack's logits are [members, tokens, vocab]: at 32 mini-s members (16,384 tokens a step,
vocab 4,096) that is 2.1G values, 8.6 GB in fp32, and the element-wise passes of an unfused
``F.cross_entropy(logits.float())`` over it (upcast, log-softmax, its backward, the downcast)
cost more than the rest of the step. Here the logits exist one chunk of tokens at a time and
are never kept. The maths is the single-cell model's: logits from a matmul in the autocast
dtype, the loss in fp32, the logits' gradient rounded to the autocast dtype before the matmuls.

In training the upstream gradient of a member's token losses is one number (the loss is their
mean), so the gradients are computed in the forward, while each chunk's logits are at hand, for
an upstream of one, and scaled in the backward. An upstream that varies along the tokens makes
the backward compute them again from recomputed logits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

# Logit values per chunk (all members): 2**27 is 512 MB in fp32, small next to a pack's
# activations and large enough that each chunk's matmuls keep the GPU busy.
CHUNK_VALUES = 2**27


def chunk_losses(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-token loss, log-sum-exp), fp32, of logits [members, tokens, vocab]."""
    logits = logits.float()
    lse = torch.logsumexp(logits, dim=-1)
    return lse - logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1), lse


def chunk_losses_and_grad(
    logits: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(per-token loss, log-sum-exp, d loss / d logits for an upstream of one)."""
    loss, lse = chunk_losses(logits, targets)
    return loss, lse, chunk_logit_grad(logits, lse, targets, torch.ones_like(loss))


def chunk_logit_grad(
    logits: torch.Tensor, lse: torch.Tensor, targets: torch.Tensor, grad: torch.Tensor
) -> torch.Tensor:
    """d loss / d logits = (softmax − one-hot) · upstream, in the logits' dtype."""
    probs = torch.exp(logits.float() - lse.unsqueeze(-1))
    hit = torch.zeros_like(probs).scatter_(-1, targets.unsqueeze(-1), 1.0)
    return ((probs - hit) * grad.unsqueeze(-1)).to(logits.dtype)


@dataclass(frozen=True)
class _ChunkFunctions:
    losses: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    losses_and_grad: Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    grad: Callable[..., torch.Tensor]


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        hidden: torch.Tensor,
        head: torch.Tensor,
        targets: torch.Tensor,
        dtype: torch.dtype,
        chunk: int,
        fns: _ChunkFunctions,
        needs_grad: bool,
    ) -> torch.Tensor:
        h, w = hidden.to(dtype), head.to(dtype)
        members, count = targets.shape
        losses = torch.empty(members, count, dtype=torch.float32, device=hidden.device)
        lse = torch.empty_like(losses)
        unit_hidden = torch.empty_like(h) if needs_grad else None
        unit_head = torch.zeros_like(head, dtype=torch.float32) if needs_grad else None
        for start in range(0, count, chunk):
            end = min(start + chunk, count)
            h_chunk = h[:, start:end]
            logits = torch.bmm(h_chunk, w.transpose(1, 2))
            if unit_hidden is None or unit_head is None:
                losses[:, start:end], lse[:, start:end] = fns.losses(logits, targets[:, start:end])
                continue
            losses[:, start:end], lse[:, start:end], grad_logits = fns.losses_and_grad(
                logits, targets[:, start:end]
            )
            unit_hidden[:, start:end] = torch.bmm(grad_logits, w)
            unit_head += torch.bmm(grad_logits.transpose(1, 2), h_chunk).float()
        units = () if unit_hidden is None else (unit_hidden, unit_head)
        ctx.save_for_backward(hidden, head, targets, lse, *units)
        ctx.dtype, ctx.chunk, ctx.fns = dtype, chunk, fns
        return losses

    @staticmethod
    def backward(ctx: Any, grad_losses: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        hidden, head, targets, lse, *units = ctx.saved_tensors
        per_member = grad_losses[:, :1]
        if units and torch.equal(grad_losses, per_member.expand_as(grad_losses)):
            unit_hidden, unit_head = units
            grad_hidden = unit_hidden * per_member.unsqueeze(-1)
            grad_head = unit_head * per_member.unsqueeze(-1)
            return grad_hidden.to(hidden.dtype), grad_head.to(head.dtype), *[None] * 5
        h, w = hidden.to(ctx.dtype), head.to(ctx.dtype)
        grad_hidden = torch.empty_like(h)
        grad_head = torch.zeros(head.shape, dtype=torch.float32, device=head.device)
        for start in range(0, targets.shape[1], ctx.chunk):
            end = min(start + ctx.chunk, targets.shape[1])
            h_chunk = h[:, start:end]
            grad_logits = ctx.fns.grad(
                torch.bmm(h_chunk, w.transpose(1, 2)),
                lse[:, start:end],
                targets[:, start:end],
                grad_losses[:, start:end],
            )
            grad_hidden[:, start:end] = torch.bmm(grad_logits, w)
            grad_head += torch.bmm(grad_logits.transpose(1, 2), h_chunk).float()
        return grad_hidden.to(hidden.dtype), grad_head.to(head.dtype), *[None] * 5


class LinearCrossEntropy:
    """Per-token cross-entropy [members, tokens] of ``hidden`` [members, tokens, dim] through
    ``head`` [members, vocab, dim], without the full logits in memory.

    ``compile``: each chunk's element-wise maths becomes one fused kernel (member count dynamic).
    """

    def __init__(self, compile: bool = False) -> None:
        wrap = (lambda fn: torch.compile(fn, dynamic=True)) if compile else (lambda fn: fn)
        self.fns = _ChunkFunctions(
            wrap(chunk_losses), wrap(chunk_losses_and_grad), wrap(chunk_logit_grad)
        )

    def __call__(
        self, hidden: torch.Tensor, head: torch.Tensor, targets: torch.Tensor
    ) -> torch.Tensor:
        device = hidden.device.type
        autocast = torch.is_autocast_enabled(device)
        dtype = torch.get_autocast_dtype(device) if autocast else hidden.dtype
        members, vocab = head.shape[0], head.shape[1]
        chunk = max(1, CHUNK_VALUES // (members * vocab))
        needs_grad = torch.is_grad_enabled() and (hidden.requires_grad or head.requires_grad)
        # Autocast would re-cast inside; the function casts to ``dtype`` itself.
        with torch.autocast(device, enabled=False):
            return _LinearCrossEntropy.apply(
                hidden, head, targets, dtype, chunk, self.fns, needs_grad
            )
