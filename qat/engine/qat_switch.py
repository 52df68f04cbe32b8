"""The FP→QAT switch: one object that every backend calls.

It converts the model (nn.Linear → QuantLinear; with quant.embeddings the embedding and head too,
qat.quant.embedding), then tells the optimizer about the new scales
(a fresh parameter group, so the weights keep their Adam moments and the scales start without).
A backend whose engine fixes the parameter set when it starts (DeepSpeed) has the layers built
up front, inactive (plain Linear maths, scales in the optimizer but never given a gradient);
the switch then initialises the scales from the current weights, resets their optimizer state
and turns fake quantization on. Either way the model after the switch is the same function of
the weights.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from qat.config import QuantConfig
from qat.optim import SCALE_GROUP, add_scale_group
from qat.quant import (
    QuantEmbedding,
    QuantLinear,
    init_scale,
    quant_parameters,
    quantize_embeddings,
    quantize_model,
    resolve_format,
)

# How a backend writes a parameter's value (DeepSpeed's ZeRO keeps its own fp32 copy to update).
ParamWriter = Callable[[nn.Parameter, torch.Tensor], None]


def write_in_place(param: nn.Parameter, value: torch.Tensor) -> None:
    with torch.no_grad():
        param.copy_(value)


class QatSwitch:
    def __init__(self, bits: float, quant: QuantConfig, reset_moments: bool = False) -> None:
        """``reset_moments``: the weights' Adam state starts afresh at the switch too
        (optim.qat_reset_moments); the scales' always does."""
        self.bits = bits
        self.quant = quant
        self.reset_moments = reset_moments

    def layers(self, model: nn.Module) -> list[QuantLinear | QuantEmbedding]:
        return [m for m in model.modules() if isinstance(m, QuantLinear | QuantEmbedding)]

    def convert(self, model: nn.Module, optimizer: torch.optim.Optimizer, active: bool) -> None:
        """Swap in QuantLinear (scales from the current weights) and give the optimizer their
        scales; ``active=False`` builds them switched off, for engines that fix parameters early."""
        fmt = resolve_format(self.bits, self.quant.format)
        quantize_model(model, fmt, kernel=self.quant.kernel, exclude=self.quant.exclude)
        if self.quant.embeddings:
            quantize_embeddings(model, self.bits, kernel=self.quant.kernel)
        for layer in self.layers(model):
            layer.active = active
        add_scale_group(optimizer, quant_parameters(model), self.quant.scale_lr_mult)

    def switch(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        write: ParamWriter = write_in_place,
    ) -> None:
        """Start QAT now: a converted-but-inactive model gets fresh scales and scale moments;
        an unconverted one is converted."""
        if self.reset_moments:
            _reset_state(optimizer, lambda name: name != SCALE_GROUP)
        layers = self.layers(model)
        if not layers:
            self.convert(model, optimizer, active=True)
            return
        for layer in layers:
            write(layer.scale, init_scale(layer.weight.detach().float(), layer.fmt))
            layer.active = True
        _reset_state(optimizer, lambda name: name == SCALE_GROUP)

    def restore(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Before loading a checkpoint written after the switch: the model in its QAT form (the
        scales' values and moments then come from the checkpoint)."""
        layers = self.layers(model)
        if not layers:
            self.convert(model, optimizer, active=True)
        for layer in layers:
            layer.active = True


def _reset_state(optimizer: torch.optim.Optimizer, groups: Callable[[str | None], bool]) -> None:
    """Zero the moments and step counts of the parameter groups whose name ``groups`` picks:
    the next step is then their first (bias correction included)."""
    # A wrapped optimizer (DeepSpeed's) keeps the torch one as .optimizer.
    inner = getattr(optimizer, "optimizer", optimizer)
    for group in inner.param_groups:
        if not groups(group.get("name")):
            continue
        for param in group["params"]:
            for value in inner.state.get(param, {}).values():
                if isinstance(value, torch.Tensor):
                    value.zero_()
