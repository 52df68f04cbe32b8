"""The batched forward of a pack: qat.model.Transformer's maths with a leading member dimension.

Activations are [members, tokens, features]; every Linear is one batched matmul over members;
attention is one call over members × batch. Members in QAT see their quantized Linear weights
fake-quantized, grouped by format (one fake-quant call per format, on the rows of its members;
one per member for a format with a per-tensor statistic), through the same fake_quant backends
as the single-cell model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from qat.config import ModelConfig
from qat.engine.packed.loss import LinearCrossEntropy
from qat.model import apply_rotary
from qat.quant import FakeQuantFunction, QuantFormat, fake_quant
from qat.quant.ops import REFERENCE


@dataclass(frozen=True)
class Segment:
    """Consecutive members (rows ``start:end``) in one form: FP (``fmt`` None) or one format.

    The trainer keeps its rows sorted by form, so a Linear's effective weight is one
    concatenation of slices, not a scatter."""

    fmt: QuantFormat | None
    start: int
    end: int


class _ScaleGradient(torch.autograd.Function):
    """Identity forward; the gradient times ``factor`` backward.

    Fake quantization scales α's gradient by 1/sqrt(numel·Qp) of the weight it sees. A format
    group stacks k members' rows into one weight of k times the numel, so a kernel that cannot
    be told the member's size gives its scales sqrt(k) back: each member's scale then gets the
    gradient it gets alone, up to one rounding.
    """

    @staticmethod
    def forward(ctx: object, value: torch.Tensor, factor: float) -> torch.Tensor:
        ctx.factor = factor  # type: ignore[attr-defined]
        return value.view_as(value)

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.factor, None  # type: ignore[attr-defined]


def effective_weight(
    weight: torch.Tensor, scale: torch.Tensor, segments: list[Segment], kernel: str
) -> torch.Tensor:
    """``weight`` [members, out, in] with the rows of QAT members fake-quantized; ``kernel``
    is a resolved backend name (qat.quant.resolve_kernel)."""
    if all(segment.fmt is None for segment in segments):
        return weight
    pieces = []
    for segment in segments:
        fmt = segment.fmt
        if fmt is None:
            pieces.append(weight[segment.start : segment.end])
            continue
        # A format with a statistic of the whole weight (NVFP4's per-tensor scale) quantizes
        # each member's weight on its own: stacked, the members would share that statistic.
        step = 1 if fmt.per_tensor else segment.end - segment.start
        for start in range(segment.start, segment.end, step):
            rows = slice(start, start + step)
            pieces.append(_fake_quant_members(weight[rows], scale[rows], fmt, kernel))
    return torch.cat(pieces) if len(pieces) > 1 else pieces[0]


def _fake_quant_members(
    weight: torch.Tensor, scale: torch.Tensor, fmt: QuantFormat, kernel: str
) -> torch.Tensor:
    """Members' weights [k, out, in] (scales [k, out, 1]) fake-quantized as one [k·out, in]
    tensor, each member with its own weight's scale-gradient factor."""
    count, out_features, in_features = weight.shape
    stacked = weight.reshape(count * out_features, in_features)
    alpha = scale.reshape(count * out_features, 1)
    if kernel == REFERENCE:
        # Told each member's weight size, the reference is each member's maths exactly.
        numel = out_features * in_features
        quantized = FakeQuantFunction.apply(stacked, alpha, fmt, numel)
    else:
        if count > 1:
            alpha = _ScaleGradient.apply(alpha, math.sqrt(count))
        quantized = fake_quant(stacked, alpha, fmt, kernel)
    return quantized.view(count, out_features, in_features)


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """As qat.model.RMSNorm: normalised in fp32. ``dtype``: the result already in the dtype
    the matmuls that read it cast to (autocast's), in the same kernel."""
    normed = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps)
    out = normed.type_as(x) * weight.unsqueeze(1)
    return out if dtype is None else out.to(dtype)


def linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x [members, tokens, in] · weightᵀ [members, in, out]."""
    return torch.bmm(x, weight.transpose(1, 2))


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return F.silu(gate) * up


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-token cross-entropy in fp32 of logits [members, tokens, vocab]."""
    members, count, vocab = logits.shape
    losses = F.cross_entropy(
        logits.reshape(members * count, vocab).float(), targets.reshape(-1), reduction="none"
    )
    return losses.view(members, count)


class PackedForward:
    """Logits and losses of all members for their token batches [members, batch, seq].

    ``compile``: the element-wise parts (norms, rotary embeddings, SwiGLU, the loss) go through
    torch.compile, one small graph each with the member count dynamic, so a fork or a departure
    does not recompile; the matmuls and the fake quantization (whose format slices change as
    members switch) stay eager.

    ``fused``: the head and the loss as one chunked operation (qat.engine.packed.loss) that
    never holds the pack's logits, and the projections that read one input as one matmul (q|k|v,
    gate|up: the input is read once, its gradient written once). Off, the single-cell model's
    operations one by one, which on CPU in fp32 keep a pack bitwise equal to its cells trained
    alone.
    """

    def __init__(
        self,
        config: ModelConfig,
        quantized: tuple[str, ...],
        kernel: str,
        compile: bool = False,
        fused: bool = False,
    ) -> None:
        self.config = config
        self.quantized = set(quantized)
        self.kernel = kernel
        self.n_heads = config.n_heads
        self.n_kv_heads = config.n_kv_heads or config.n_heads
        self.head_dim = config.dim // config.n_heads
        wrap = (lambda fn: torch.compile(fn, dynamic=True)) if compile else (lambda fn: fn)
        self.rms_norm = wrap(rms_norm)
        self.rotary = wrap(apply_rotary)
        self.swiglu = wrap(swiglu)
        self.cross_entropy = wrap(cross_entropy)
        self.fused = fused
        self.fused_loss = LinearCrossEntropy(compile) if fused else None

    def _weight(
        self, params: dict[str, torch.Tensor], name: str, segments: list[Segment]
    ) -> torch.Tensor:
        weight = params[f"{name}.weight"]
        if name in self.quantized:
            return effective_weight(weight, params[f"{name}.scale"], segments, self.kernel)
        return weight

    def hidden(
        self,
        params: dict[str, torch.Tensor],
        tokens: torch.Tensor,
        rope: torch.Tensor,
        segments: list[Segment],
    ) -> torch.Tensor:
        """The final normalised hidden states [members, batch·seq, dim]."""
        config = self.config
        members, batch, seq = tokens.shape
        # A norm's output only feeds matmuls; fused, it leaves its kernel in their dtype.
        device = tokens.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None
        matmul_dtype = dtype if self.fused else None
        embedding = params["tok_embeddings.weight"]
        vocab = embedding.shape[1]
        # One lookup in the members' tables laid end to end.
        offsets = torch.arange(members, device=tokens.device).view(-1, 1, 1) * vocab
        x = F.embedding(tokens + offsets, embedding.reshape(members * vocab, -1))
        x = x.view(members, batch * seq, -1)
        for index in range(config.n_layers):
            prefix = f"layers.{index}"
            weight = params[f"{prefix}.attention_norm.weight"]
            h = self.rms_norm(x, weight, config.norm_eps, matmul_dtype)
            x = x + self._attention(params, f"{prefix}.attention", h, batch, seq, rope, segments)
            weight = params[f"{prefix}.ffn_norm.weight"]
            h = self.rms_norm(x, weight, config.norm_eps, matmul_dtype)
            x = x + self._feed_forward(params, f"{prefix}.feed_forward", h, segments)
        return self.rms_norm(x, params["norm.weight"], config.norm_eps, matmul_dtype)

    def _projections(
        self,
        params: dict[str, torch.Tensor],
        names: tuple[str, ...],
        h: torch.Tensor,
        segments: list[Segment],
    ) -> tuple[torch.Tensor, ...]:
        """``h`` through each of the Linears ``names``."""
        weights = [self._weight(params, name, segments) for name in names]
        if not self.fused:
            return tuple(linear(h, weight) for weight in weights)
        # Each output feature is its own row (its own per-channel scale): stacking the rows
        # changes no value, only the number of matmuls.
        joint = linear(h, torch.cat(weights, dim=1))
        return joint.split([weight.shape[1] for weight in weights], dim=-1)

    def _fused_heads(
        self,
        params: dict[str, torch.Tensor],
        names: tuple[str, ...],
        h: torch.Tensor,
        batch: int,
        seq: int,
        rope: torch.Tensor,
        segments: list[Segment],
    ) -> tuple[torch.Tensor, ...]:
        """q, k, v [members·batch, heads, seq, head_dim] from one q|k|v matmul, with q and k
        rotated in one call, in the matmul's [tokens, heads, head_dim] layout (a rotation of
        the transposed views reads memory out of order)."""
        weights = [self._weight(params, name, segments) for name in names]
        joint = linear(h, torch.cat(weights, dim=1))
        rows = h.shape[0] * batch
        rotated = self.n_heads + self.n_kv_heads
        width = rotated * self.head_dim
        qk = joint[..., :width].reshape(rows, seq, rotated, self.head_dim)
        qk = self.rotary(qk, rope.unsqueeze(1))  # tables [seq, 1, head_dim/2, 2]: every head
        v = joint[..., width:].reshape(rows, seq, self.n_kv_heads, self.head_dim)
        q, k = qk[:, :, : self.n_heads], qk[:, :, self.n_heads :]
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)

    def _attention(
        self,
        params: dict[str, torch.Tensor],
        prefix: str,
        h: torch.Tensor,
        batch: int,
        seq: int,
        rope: torch.Tensor,
        segments: list[Segment],
    ) -> torch.Tensor:
        members = h.shape[0]
        names = (f"{prefix}.wq", f"{prefix}.wk", f"{prefix}.wv")
        if self.fused:
            q, k, v = self._fused_heads(params, names, h, batch, seq, rope, segments)
        else:
            q, k, v = self._projections(params, names, h, segments)

            def heads(projected: torch.Tensor, count: int) -> torch.Tensor:
                return projected.view(members * batch, seq, count, self.head_dim).transpose(1, 2)

            q = self.rotary(heads(q, self.n_heads), rope)
            k = self.rotary(heads(k, self.n_kv_heads), rope)
            v = heads(v, self.n_kv_heads)
        out = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, enable_gqa=self.n_kv_heads != self.n_heads
        )
        out = out.transpose(1, 2).reshape(members, batch * seq, -1)
        return linear(out, self._weight(params, f"{prefix}.wo", segments))

    def _feed_forward(
        self,
        params: dict[str, torch.Tensor],
        prefix: str,
        h: torch.Tensor,
        segments: list[Segment],
    ) -> torch.Tensor:
        gate, up = self._projections(params, (f"{prefix}.w1", f"{prefix}.w3"), h, segments)
        return linear(self.swiglu(gate, up), self._weight(params, f"{prefix}.w2", segments))

    def _head(self, params: dict[str, torch.Tensor], segments: list[Segment]) -> torch.Tensor:
        if "output" in self.quantized:  # an untied head that quant.exclude leaves quantized
            return self._weight(params, "output", segments)
        # tied: the embedding table is the head
        return params.get("output.weight", params["tok_embeddings.weight"])

    def logits(
        self,
        params: dict[str, torch.Tensor],
        tokens: torch.Tensor,
        rope: torch.Tensor,
        segments: list[Segment],
    ) -> torch.Tensor:
        """[members, batch·seq, vocab]."""
        return linear(self.hidden(params, tokens, rope, segments), self._head(params, segments))

    def token_losses(
        self,
        params: dict[str, torch.Tensor],
        tokens: torch.Tensor,
        targets: torch.Tensor,
        rope: torch.Tensor,
        segments: list[Segment],
    ) -> torch.Tensor:
        """Cross-entropy of every target token, [members, batch·seq], in fp32."""
        if self.fused_loss is None:
            return self.cross_entropy(self.logits(params, tokens, rope, segments), targets)
        hidden = self.hidden(params, tokens, rope, segments)
        members = hidden.shape[0]
        return self.fused_loss(hidden, self._head(params, segments), targets.reshape(members, -1))
