"""The single entry point for fake-quant math, dispatching to a registered backend.

A backend is ``fn(w, scale, fmt) -> ŵ``; it must be differentiable with the gradients of
``reference.py``. "reference" is built in. A CUDA kernel plugs in with
``register_backend("cuda", fn, available)``, and ``kernel="auto"`` then uses it wherever its
``available(w)`` says yes, for every format: the kernel equals the reference bit for bit in ŵ and
dL/dw (integer and float formats, on a GPU) and is 17-46x faster than it (docs/benchmarks.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from qat.quant.errors import QuantConfigError
from qat.quant.formats import QuantFormat
from qat.quant.reference import reference_fake_quant

BackendFn = Callable[[Tensor, Tensor, QuantFormat], Tensor]
Availability = Callable[[Tensor], bool]

AUTO = "auto"
REFERENCE = "reference"
CUDA = "cuda"


@dataclass(frozen=True)
class _Backend:
    fn: BackendFn
    available: Availability


_BACKENDS: dict[str, _Backend] = {REFERENCE: _Backend(reference_fake_quant, lambda w: True)}


def register_backend(name: str, fn: BackendFn, available: Availability) -> None:
    """Add (or replace) a backend; "auto" and "reference" are reserved."""
    if not isinstance(name, str) or not name or name in (AUTO, REFERENCE):
        raise QuantConfigError(
            f"backend name {name!r} is not allowed; use a non-empty name other than "
            f"{AUTO!r} and {REFERENCE!r}"
        )
    if not callable(fn) or not callable(available):
        raise QuantConfigError(f"backend {name!r}: fn and available must be callables")
    _BACKENDS[name] = _Backend(fn, available)


def known_kernels() -> tuple[str, ...]:
    """Names a ``kernel`` option may take: auto, the registered backends, and cuda."""
    return (AUTO, *_BACKENDS, *(() if CUDA in _BACKENDS else (CUDA,)))


def check_kernel_name(kernel: str) -> None:
    """Reject unknown kernel names early (e.g. at model build), before any device is known."""
    if kernel not in known_kernels():
        allowed = ", ".join(known_kernels())
        raise QuantConfigError(f"kernel={kernel!r} is unknown; allowed: {allowed}")


def _probe(device: torch.device | str) -> Tensor:
    """An empty float32 tensor on ``device``, for availability checks that need a tensor."""
    try:
        return torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as err:  # torch raises AssertionError without CUDA
        raise QuantConfigError(f"device={str(device)!r} is not usable here: {err}") from None


def resolve_kernel(kernel: str, device: torch.device | str | Tensor) -> str:
    """The backend name that ``kernel`` means for tensors on ``device`` (or for that tensor).

    A device is checked with an empty float32 tensor on it; pass the weight itself when a
    backend's availability also depends on dtype or layout.
    """
    check_kernel_name(kernel)
    probe = device if isinstance(device, Tensor) else _probe(device)
    if kernel == AUTO:
        cuda = _BACKENDS.get(CUDA)
        return CUDA if cuda is not None and cuda.available(probe) else REFERENCE
    backend = _BACKENDS.get(kernel)
    if backend is None:
        raise QuantConfigError(
            f"kernel={kernel!r} is not available: no {kernel!r} backend has been registered "
            f"(register_backend); use kernel={AUTO!r} or {REFERENCE!r}"
        )
    if not backend.available(probe):
        raise QuantConfigError(
            f"kernel={kernel!r} is not available for a {probe.dtype} tensor on "
            f"{probe.device}; use kernel={AUTO!r} or {REFERENCE!r}"
        )
    return kernel


def _check_operands(w: Tensor, scale: Tensor, fmt: QuantFormat) -> None:
    if not isinstance(fmt, QuantFormat):
        raise QuantConfigError(f"fmt={fmt!r} is not a QuantFormat; use format_for_bits(bits)")
    if w.dim() != 2 or not w.is_floating_point():
        raise ValueError(f"weight must be a 2-D float tensor, got {w.dtype} {tuple(w.shape)}")
    if tuple(scale.shape) != (w.shape[0], 1):
        raise ValueError(
            f"scale must have shape {(w.shape[0], 1)} for weight {tuple(w.shape)}, "
            f"got {tuple(scale.shape)}"
        )


def fake_quant(w: Tensor, scale: Tensor, fmt: QuantFormat, kernel: str = AUTO) -> Tensor:
    """ŵ = α·q(w/α) per output row, differentiable (STE) in w and α, through the chosen backend."""
    _check_operands(w, scale, fmt)
    return _BACKENDS[resolve_kernel(kernel, w)].fn(w, scale, fmt)
