"""The token embedding and LM head fake-quantized at max(bits, EMBEDDING_MIN_BITS).

Low-bit QAT setups keep the embedding table and the head at a wider format than the body: a
1-bit vocabulary table loses most of what tells tokens apart, and the head sets every logit.
The table is quantized per row (one scale per token), so a head tied to it — the same tensor
as a Linear of [vocab, dim] quantized per output row — uses the very same scale and levels.
"""

from __future__ import annotations

from typing import cast

import torch.nn.functional as F
from torch import Tensor, nn

from qat.quant.errors import QuantConfigError
from qat.quant.formats import QuantFormat, format_for_bits, init_scale
from qat.quant.linear import QuantLinear
from qat.quant.ops import check_kernel_name, fake_quant

EMBEDDING_MIN_BITS = 4.0


def embedding_format(bits: float) -> QuantFormat:
    """The format of the embedding and head for a body of ``bits`` (16: FP, never asked)."""
    return format_for_bits(max(float(bits), EMBEDDING_MIN_BITS))


class QuantEmbedding(nn.Module):
    """An embedding lookup into the fake-quantized table. It holds the Embedding's own weight
    Parameter (optimizer state keyed by it survives the swap) and a new per-row ``scale``."""

    def __init__(self, weight: nn.Parameter, fmt: QuantFormat, kernel: str = "auto") -> None:
        super().__init__()
        check_kernel_name(kernel)
        self.weight = weight
        self.scale = nn.Parameter(init_scale(weight, fmt).to(weight.device))
        self.fmt = fmt
        self.kernel = kernel
        self.active = True  # as QuantLinear.active: False until a fixed-parameter engine switches

    def forward(self, tokens: Tensor) -> Tensor:
        if not self.active:
            return F.embedding(tokens, self.weight)
        return F.embedding(tokens, fake_quant(self.weight, self.scale, self.fmt, self.kernel))

    def extra_repr(self) -> str:
        vocab, dim = self.weight.shape
        active = "" if self.active else ", inactive"
        return f"{vocab}, {dim}, format={self.fmt.name}, kernel={self.kernel}{active}"


def quantize_embeddings(
    model: nn.Module, bits: float, kernel: str = "auto", head: str = "output"
) -> list[str]:
    """Swap every nn.Embedding for a QuantEmbedding and the Linear ``head`` for a QuantLinear,
    both at :func:`embedding_format`, in place; a head tied to an embedding shares its scale.
    Returns the names swapped."""
    fmt = embedding_format(bits)
    swapped: list[str] = []
    by_weight: dict[int, QuantEmbedding] = {}
    for name, module in list(model.named_modules()):
        if type(module) is nn.Embedding:
            quantized = QuantEmbedding(cast(nn.Parameter, module.weight), fmt, kernel)
            by_weight[id(module.weight)] = quantized
            _replace(model, name, quantized)
            swapped.append(name)
    linear = dict(model.named_modules()).get(head)
    if type(linear) is not nn.Linear:
        raise QuantConfigError(f"no nn.Linear head named {head!r} to quantize with the embedding")
    quantized_head = QuantLinear.from_linear(linear, fmt, kernel)
    tied = by_weight.get(id(linear.weight))
    if tied is not None:
        quantized_head.scale = tied.scale  # one tensor, one set of levels
    _replace(model, head, quantized_head)
    return [*swapped, head]


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent), leaf, module)
