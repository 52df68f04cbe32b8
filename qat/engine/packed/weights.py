"""The stacked weights of a pack: one flat leaf tensor [members, n] per optimizer group.

Every parameter of the single-cell model (qat.model.Transformer) is a view into the flat buffer
of its group ("decay": matrices; "no_decay": norms; "scales": the quantizer scales of the
quantized linears), so the optimizer updates a whole group in a few kernels and membership
changes (a fork, a member leaving) are one row gather per buffer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from qat.model import Transformer

DECAY, NO_DECAY, SCALES = "decay", "no_decay", "scales"
GROUPS = (DECAY, NO_DECAY, SCALES)


@dataclass(frozen=True)
class Slot:
    """Where one parameter lives in its group's flat buffer (per member)."""

    group: str
    offset: int
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return int(torch.Size(self.shape).numel())

    @property
    def end(self) -> int:
        return self.offset + self.numel


class ParameterLayout:
    """The names, groups and per-member shapes of a model's parameters (shared tensors once)."""

    def __init__(self, model: Transformer, quantized: Sequence[str]) -> None:
        self.quantized = tuple(quantized)  # names of the quantized Linear modules
        self.slots: dict[str, Slot] = {}
        self.sizes = dict.fromkeys(GROUPS, 0)
        for name, param in model.named_parameters():  # a tied head is listed once
            self._add(name, DECAY if param.ndim >= 2 else NO_DECAY, tuple(param.shape))
        for linear in self.quantized:
            out_features = self.slots[f"{linear}.weight"].shape[0]
            self._add(f"{linear}.scale", SCALES, (out_features, 1))
        self.tied = model.config.tie_embeddings

    def _add(self, name: str, group: str, shape: tuple[int, ...]) -> None:
        slot = Slot(group, self.sizes[group], shape)
        self.slots[name] = slot
        self.sizes[group] += slot.numel

    def parameter_order(self, with_scales: bool) -> list[Slot]:
        """The single-cell model's parameter order: a QuantLinear's scale follows its weight."""
        order = []
        for name, slot in self.slots.items():
            if slot.group == SCALES:
                continue
            order.append(slot)
            linear = name.removesuffix(".weight")
            if with_scales and linear in self.quantized:
                order.append(self.slots[f"{linear}.scale"])
        return order

    def views(self, flats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Every parameter as a [members, *shape] view of its flat buffer.

        One torch.split per buffer: its backward writes the gradient of the whole buffer in one
        concatenation, where a slice per parameter would allocate the buffer once per slice."""
        names = {group: [n for n, s in self.slots.items() if s.group == group] for group in GROUPS}
        views = {}
        for group, members in names.items():
            if not members:
                continue
            sizes = [self.slots[name].numel for name in members]
            for name, chunk in zip(members, torch.split(flats[group], sizes, dim=1), strict=True):
                views[name] = chunk.view(-1, *self.slots[name].shape)
        return views

    def stack(self, models: Sequence[nn.Module], device: torch.device) -> dict[str, torch.Tensor]:
        """Flat buffers holding ``models``' parameters (scales zero: set at each QAT switch)."""
        flats = {
            group: torch.zeros(len(models), size, device=device)
            for group, size in self.sizes.items()
        }
        with torch.no_grad():
            for row, model in enumerate(models):
                params = dict(model.named_parameters())
                for name, slot in self.slots.items():
                    if slot.group != SCALES:
                        value = params[name].detach().reshape(-1)
                        flats[slot.group][row, slot.offset : slot.offset + slot.numel] = value
        return flats

    def member_state(
        self, flats: dict[str, torch.Tensor], row: int, quantized: bool = False
    ) -> dict[str, torch.Tensor]:
        """One member's weights under the single-cell model's state_dict names (its quantizer
        scales too when ``quantized``: the names of its QuantLinear layers)."""
        state = {}
        for name, slot in self.slots.items():
            if slot.group == SCALES and not quantized:
                continue
            flat = flats[slot.group][row, slot.offset : slot.offset + slot.numel]
            state[name] = flat.detach().reshape(slot.shape).clone()
        if self.tied:
            state["output.weight"] = state["tok_embeddings.weight"]
        return state
