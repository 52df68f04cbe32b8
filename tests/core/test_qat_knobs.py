"""The QAT phase's knobs: its peak learning rate (schedule.qat_lr_ratio) and resetting the
weights' Adam moments at the switch (optim.qat_reset_moments), in the single-cell and packed
optimizers; at their defaults they leave every run and trunk key as it was."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from qat.config import ModelConfig, OptimConfig, QuantConfig, RunConfig
from qat.engine import QatSwitch
from qat.engine.packed.optimizer import PackedAdamW
from qat.engine.packed.weights import DECAY, NO_DECAY, SCALES, ParameterLayout
from qat.errors import ConfigError
from qat.model import Transformer
from qat.optim import SCALE_GROUP, build_optimizer
from qat.schedule import LrSchedule, plan_phases
from qat.tracking import run_name
from qat.trunk import trunk_key

MODEL = ModelConfig(name="t", dim=32, n_layers=2, n_heads=4, ffn_dim=64)


def tree(**overrides):
    base = {
        "bits": 4,
        "qat_frac": 0.3,
        "tokens": "2M",
        "fusion": False,
        "seed": 0,
        "model": {"name": "nano", "dim": 64, "n_layers": 2, "n_heads": 4, "ffn_dim": 176},
        "data": {"source": "bundled", "vocab_size": 4096, "seq_len": 128, "batch_size": 32},
    }
    base.update(overrides)
    return base


def test_default_knobs_keep_the_keys_recorded_before_them():
    config = RunConfig.from_dict(tree())
    # The keys this config had before the knobs existed (runs in MLflow are found by them).
    assert config.run_key == "a63977a0bec86ff5"
    assert trunk_key(config) == "3626b90b830890c3"


def test_set_knobs_change_the_run_key_but_not_the_trunk():
    base = RunConfig.from_dict(tree())
    lower = RunConfig.from_dict(tree(schedule={"qat_lr_ratio": 0.3}))
    reset = RunConfig.from_dict(tree(optim={"qat_reset_moments": True}))
    assert len({base.run_key, lower.run_key, reset.run_key}) == 3
    assert trunk_key(base) == trunk_key(lower) == trunk_key(reset)  # one FP trunk for all
    names = [run_name(c) for c in (base, lower, reset)]
    assert names == [
        f"nano-b4-f0.3-t2M-s0-bundled-v4096-{base.run_key[:6]}",
        f"nano-b4-f0.3-qlr0.3-t2M-s0-bundled-v4096-{lower.run_key[:6]}",
        f"nano-b4-f0.3-reset-t2M-s0-bundled-v4096-{reset.run_key[:6]}",
    ]


def test_an_fp_only_cell_ignores_them():
    fp = RunConfig.from_dict(tree(bits=16))
    knobs = {"schedule": {"qat_lr_ratio": 0.3}, "optim": {"qat_reset_moments": True}}
    assert RunConfig.from_dict(tree(bits=16, **knobs)).run_key == fp.run_key


def test_a_bad_ratio_is_one_line():
    with pytest.raises(ConfigError, match=r"schedule\.qat_lr_ratio=0\.0 > 0"):
        RunConfig.from_dict(tree(schedule={"qat_lr_ratio": 0}))


@pytest.mark.parametrize("fusion", [False, True])
def test_the_ratio_scales_the_qat_phase_only(fusion):
    config = RunConfig.from_dict(tree(fusion=fusion))
    lower = dataclasses.replace(
        config, schedule=dataclasses.replace(config.schedule, qat_lr_ratio=0.25)
    )
    plan = plan_phases(config)
    full, scaled = LrSchedule(plan, config.schedule), LrSchedule(plan, lower.schedule)
    for step in range(plan.total_steps):
        expected = full(step) * (0.25 if step >= plan.fp_steps else 1.0)
        assert scaled(step) == pytest.approx(expected, abs=1e-15)
    assert scaled.stable_until() == full.stable_until()  # same branch point from the trunk


def trained(reset: bool) -> torch.optim.Optimizer:
    torch.manual_seed(0)
    model = Transformer(MODEL, 64)
    optimizer = build_optimizer(model, OptimConfig())
    tokens = torch.randint(0, 64, (2, 8))
    for _ in range(2):
        model(tokens).logsumexp(-1).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    QatSwitch(4.0, QuantConfig(kernel="reference"), reset_moments=reset).switch(model, optimizer)
    return optimizer


@pytest.mark.parametrize("reset", [False, True])
def test_the_switch_resets_the_weights_moments_only_when_asked(reset):
    optimizer = trained(reset)
    for group in optimizer.param_groups:
        if group["name"] == SCALE_GROUP:
            continue
        for param in group["params"]:
            state = optimizer.state[param]
            assert (int(state["step"]) == 0) == reset
            assert bool(torch.count_nonzero(state["exp_avg_sq"]) == 0) == reset


def test_a_packed_member_resets_its_own_weights_moments():
    layout = ParameterLayout(Transformer(MODEL, 64), [])
    flats = {g: torch.randn(3, size) for g, size in layout.sizes.items()}
    optimizer = PackedAdamW(flats, layout, OptimConfig(), scale_lr_mult=1.0)
    for flat in flats.values():
        flat.grad = torch.randn_like(flat)
    optimizer.step(flats, torch.full((3,), 1e-3, dtype=torch.float64), torch.ones(3, dtype=bool))
    optimizer.reset_weights(1)
    for group in (DECAY, NO_DECAY):
        state = optimizer.state[group]
        assert state["steps"].tolist() == [1, 0, 1]
        assert torch.count_nonzero(state["exp_avg"][1]) == 0
        assert (
            torch.count_nonzero(state["exp_avg_sq"][0])
            > 0
            < torch.count_nonzero(state["exp_avg_sq"][2])
        )
    assert optimizer.state[SCALES]["steps"].tolist() == [1, 1, 1]  # reset_scales' job
