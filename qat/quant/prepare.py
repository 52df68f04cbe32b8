"""Swap a model's nn.Linear layers for QuantLinear in place, selected by name."""

from __future__ import annotations

from collections.abc import Sequence
from fnmatch import fnmatchcase

from torch import nn

from qat.quant.embedding import QuantEmbedding
from qat.quant.errors import QuantConfigError
from qat.quant.formats import QuantFormat, as_format
from qat.quant.linear import QuantLinear
from qat.quant.ops import check_kernel_name

# Glob patterns (see _excluded): token embeddings and their projections ("tok_embeddings",
# "embed_tokens"), LM heads ("lm_head", "head"), and torchtitan's output layer ("output").
DEFAULT_EXCLUDE: tuple[str, ...] = ("*embed*", "*head", "output")
QUANTIZED = (QuantLinear, QuantEmbedding)  # the modules that own a learned scale


def _excluded(name: str, patterns: Sequence[str]) -> bool:
    """A pattern is a case-sensitive fnmatch glob, tried against the full qualified name and
    against the module's own (last) name; so "output" hits "output" and "model.output" but not
    "layers.0.output_proj", and "layers.0.*" hits everything in the first block."""
    leaf = name.rsplit(".", 1)[-1]
    return any(fnmatchcase(name, p) or fnmatchcase(leaf, p) for p in patterns)


def _check_patterns(exclude: Sequence[str]) -> tuple[str, ...]:
    # A bare string is a Sequence[str] too, and would silently exclude by single characters.
    if isinstance(exclude, str) or not all(isinstance(p, str) for p in exclude):
        raise QuantConfigError(
            f"exclude={exclude!r} is not allowed; pass a list of glob patterns, e.g. ['*embed*']"
        )
    return tuple(exclude)


def quantize_model(
    model: nn.Module,
    bits: QuantFormat | float | str,
    kernel: str = "auto",
    exclude: Sequence[str] = DEFAULT_EXCLUDE,
) -> list[str]:
    """Replace every plain nn.Linear not matched by ``exclude`` with a QuantLinear, in place.

    Returns the qualified names swapped. Subclasses of nn.Linear are left alone (their owners,
    e.g. nn.MultiheadAttention, may read the weight directly). nn.Embedding is never touched,
    and a Linear whose weight is tied to an embedding raises: quantizing embeddings is not
    supported yet. Raises QuantConfigError when nothing would be swapped.
    """
    fmt = as_format(bits)
    check_kernel_name(kernel)
    patterns = _check_patterns(exclude)
    embedding_weights = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}

    targets: dict[int, QuantLinear] = {}
    names: list[str] = []
    linears: list[str] = []
    for name, module in model.named_modules():
        if type(module) is not nn.Linear or not name:  # the root cannot be replaced in place
            continue
        linears.append(name)
        if _excluded(name, patterns):
            continue
        if id(module.weight) in embedding_weights:
            raise QuantConfigError(
                f"{name!r} shares its weight with an nn.Embedding (tied LM head); quantizing "
                "embeddings is not supported, so exclude it"
            )
        targets[id(module)] = QuantLinear.from_linear(module, fmt, kernel)
        names.append(name)

    if not names:
        if is_quantized(model):
            raise QuantConfigError("model is already quantized; call quantize_model once")
        raise QuantConfigError(
            f"exclude={list(patterns)} leaves no nn.Linear to quantize; linears: {linears}"
        )

    # Replace in every parent, so a Linear registered under several names is swapped everywhere.
    # named_children() would skip repeated children, hence _modules.
    for parent in list(model.modules()):
        for child_name, child in list(parent._modules.items()):
            if id(child) in targets:
                setattr(parent, child_name, targets[id(child)])
    return names


def quant_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The learned scales of all quantized modules (to put in the optimizer), each once: a tied
    head shares its embedding's."""
    scales = {id(m.scale): m.scale for m in model.modules() if isinstance(m, QUANTIZED)}
    return list(scales.values())


def is_quantized(model: nn.Module) -> bool:
    return any(isinstance(m, QUANTIZED) for m in model.modules())
