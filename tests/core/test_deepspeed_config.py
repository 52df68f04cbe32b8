"""The DeepSpeed config generated from a run config (no hand-kept JSON)."""

from __future__ import annotations

import pytest

from qat.config import RunConfig
from qat.engine.deepspeed_backend import deepspeed_config
from qat.errors import ConfigError

TREE = {
    "bits": 4,
    "qat_frac": 0.3,
    "tokens": "1M",
    "fusion": False,
    "seed": 0,
    "model": {"name": "t", "dim": 32, "n_layers": 1, "n_heads": 2, "ffn_dim": 64},
    "data": {"batch_size": 32, "seq_len": 64},
}


def run_config(**trainer) -> RunConfig:
    return RunConfig.from_dict(
        {**TREE, "optim": {"grad_clip": 0.5}, "trainer": {"backend": "deepspeed", **trainer}}
    )


def test_global_batch_is_split_over_ranks_and_micro_steps():
    ds = deepspeed_config(run_config(zero_stage=2, grad_accum=2), world_size=4)
    assert ds["train_batch_size"] == 32
    assert ds["train_micro_batch_size_per_gpu"] == 4
    assert ds["gradient_accumulation_steps"] == 2
    assert ds["zero_optimization"] == {"stage": 2}
    assert ds["gradient_clipping"] == 0.5
    assert "torch_autocast" not in ds


def test_bf16_is_autocast_with_fp32_gradient_reduction():
    ds = deepspeed_config(run_config(), world_size=1, bf16=True)
    assert ds["torch_autocast"] == {
        "enabled": True,
        "dtype": "bfloat16",
        "lower_precision_safe_modules": [],
    }
    assert not ds["bf16"]["enabled"]  # weights stay fp32, as with trainer=torch


def test_a_batch_that_does_not_split_is_refused():
    with pytest.raises(ConfigError, match="pick a multiple of 12"):
        deepspeed_config(run_config(grad_accum=3), world_size=4)


def test_trunk_auto_resolves_by_backend_and_share_is_refused():
    assert run_config().trunk == "off"
    tree = TREE
    assert RunConfig.from_dict({**tree, "trunk": "auto"}).trunk == "share"
    with pytest.raises(ConfigError, match="trunk=off"):
        RunConfig.from_dict({**tree, "trunk": "share", "trainer": {"backend": "deepspeed"}})
    with pytest.raises(ConfigError, match="grad_accum=1"):
        RunConfig.from_dict({**tree, "trainer": {"grad_accum": 2}})
    with pytest.raises(ConfigError, match="zero_stage"):
        RunConfig.from_dict({**tree, "trainer": {"backend": "deepspeed", "zero_stage": 3}})
