"""Optimizer construction: AdamW with decay on matrices only, and a group for quantizer scales."""

from __future__ import annotations

import torch
from torch import nn

from qat.config import OptimConfig

SCALE_GROUP = "quant_scales"


def build_optimizer(model: nn.Module, config: OptimConfig) -> torch.optim.AdamW:
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, param in model.named_parameters():
        if name.endswith(".scale"):
            continue  # added by add_scale_group at the QAT switch
        (decay if param.ndim >= 2 else no_decay).append(param)
    groups = [
        {"params": decay, "weight_decay": config.weight_decay, "name": "decay", "lr_mult": 1.0},
        {"params": no_decay, "weight_decay": 0.0, "name": "no_decay", "lr_mult": 1.0},
    ]
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, eps=config.eps)


def add_scale_group(
    optimizer: torch.optim.Optimizer, scales: list[nn.Parameter], lr_mult: float
) -> None:
    """Give the new quantizer scales to the optimizer (weights keep their Adam moments)."""
    optimizer.add_param_group(
        {"params": scales, "weight_decay": 0.0, "name": SCALE_GROUP, "lr_mult": lr_mult}
    )


def set_learning_rate(optimizer: torch.optim.Optimizer, peak_lr: float, multiplier: float) -> float:
    lr = peak_lr * multiplier
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_mult"]
    return lr
