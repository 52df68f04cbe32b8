"""QuantLinear: a Linear whose weight is fake-quantized on every forward."""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qat.quant.formats import QuantFormat, as_format, init_scale
from qat.quant.ops import check_kernel_name, fake_quant


class QuantLinear(nn.Module):
    """y = x·ŵᵀ + b with ŵ = fake_quant(weight, scale).

    It holds the very ``weight`` and ``bias`` Parameter objects it is given, so optimizer state
    keyed by them survives a swap; the new ``scale`` Parameter ([out, 1], float32) must be added
    to the optimizer by the caller. The fp32 master weight is fake-quantized first and F.linear
    then follows any active autocast.
    """

    bias: nn.Parameter | None  # registered in __init__ (nn.Module's __getattr__ is untyped)

    def __init__(
        self,
        weight: nn.Parameter,
        bias: nn.Parameter | None,
        fmt: QuantFormat,
        kernel: str = "auto",
    ) -> None:
        super().__init__()
        if weight.dim() != 2:
            raise ValueError(f"weight must be 2-D [out, in], got shape {tuple(weight.shape)}")
        check_kernel_name(kernel)
        self.out_features, self.in_features = weight.shape
        self.weight = weight
        self.register_parameter("bias", bias)
        self.scale = nn.Parameter(init_scale(weight, fmt).to(weight.device))
        self.fmt = fmt
        self.kernel = kernel
        # False: a plain Linear that already owns its scale (engines such as DeepSpeed fix the
        # parameter set at start-up, so QAT cells create the scales early and switch them on).
        self.active = True

    @classmethod
    def from_linear(
        cls, linear: nn.Linear, fmt: QuantFormat | float | str, kernel: str = "auto"
    ) -> QuantLinear:
        """Wrap ``linear``'s own parameters; ``fmt`` may also be a bits value."""
        # nn.Linear declares weight a Tensor; it is its Parameter.
        return cls(cast(nn.Parameter, linear.weight), linear.bias, as_format(fmt), kernel)

    @torch.no_grad()
    def reset_scale(self) -> None:
        """Re-initialise α from the current weight (after meta-device init or loading weights)."""
        self.scale.copy_(init_scale(self.weight, self.fmt))

    def forward(self, x: Tensor) -> Tensor:
        if not self.active:
            return F.linear(x, self.weight, self.bias)
        return F.linear(x, fake_quant(self.weight, self.scale, self.fmt, self.kernel), self.bias)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, format={self.fmt.name}, kernel={self.kernel}"
            + ("" if self.active else ", inactive")
        )
