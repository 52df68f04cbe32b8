"""data.train_fraction in the run configuration: at 1.0 every run and trunk key stays as it was
recorded; below it the cell (and its FP trunk) is another one; out of (0, 1] is refused."""

from __future__ import annotations

import pytest

from qat.config import RunConfig
from qat.errors import ConfigError
from qat.tracking import run_name
from qat.trunk import trunk_key


def tree(bits=4, **data):
    return {
        "bits": bits,
        "qat_frac": 0.3,
        "tokens": "2M",
        "fusion": False,
        "seed": 0,
        "model": {"name": "nano", "dim": 64, "n_layers": 2, "n_heads": 4, "ffn_dim": 176},
        "data": {"source": "bundled", "vocab_size": 4096, "seq_len": 128, "batch_size": 32, **data},
    }


def test_the_whole_split_keeps_the_recorded_keys():
    for config in (RunConfig.from_dict(tree()), RunConfig.from_dict(tree(train_fraction=1))):
        # The keys this cell had before data.train_fraction existed (tests/core/test_qat_knobs.py).
        assert config.run_key == "a63977a0bec86ff5"
        assert trunk_key(config) == "3626b90b830890c3"
        assert "train_fraction" not in config.science()["data"]
        assert run_name(config) == "nano-b4-f0.3-t2M-s0-bundled-v4096-a63977"


@pytest.mark.parametrize("bits", [4, 16])
def test_a_leading_fraction_is_another_cell_on_another_trunk(bits):
    full = RunConfig.from_dict(tree(bits))
    half = RunConfig.from_dict(tree(bits, train_fraction=0.5))
    assert half.data.train_fraction == 0.5
    assert half.science()["data"]["train_fraction"] == 0.5
    assert half.run_key != full.run_key  # an FP-only cell too: it trains on other data
    assert trunk_key(half) != trunk_key(full)  # its FP phase reads other batches
    assert run_name(half).endswith(f"-bundled-v4096-train0.5-{half.run_key[:6]}")


@pytest.mark.parametrize("bits", [4, 16])
def test_a_spread_part_is_another_cell_and_leading_keeps_the_recorded_key(bits):
    half = RunConfig.from_dict(tree(bits, train_fraction=0.5))
    leading = RunConfig.from_dict(tree(bits, train_fraction=0.5, train_part="leading"))
    spread = RunConfig.from_dict(tree(bits, train_fraction=0.5, train_part="spread"))
    assert leading.run_key == half.run_key and "train_part" not in half.science()["data"]
    assert spread.science()["data"]["train_part"] == "spread"
    assert spread.run_key != half.run_key and trunk_key(spread) != trunk_key(half)
    assert run_name(spread).endswith(f"-bundled-v4096-spread0.5-{spread.run_key[:6]}")
    # The whole split has no part to choose: the cell is the whole-split one.
    whole = RunConfig.from_dict(tree(bits, train_part="spread"))
    assert whole.run_key == RunConfig.from_dict(tree(bits)).run_key


def test_an_unknown_part_is_one_line():
    with pytest.raises(
        ConfigError, match=r"expected data\.train_part=middle in \{leading, spread\}"
    ):
        RunConfig.from_dict(tree(train_fraction=0.5, train_part="middle"))


@pytest.mark.parametrize("bad", [0, -0.5, 1.5, float("nan")])
def test_a_fraction_out_of_range_is_one_line(bad):
    with pytest.raises(ConfigError, match=r"expected data\.train_fraction=.* in \(0, 1\]"):
        RunConfig.from_dict(tree(train_fraction=bad))


def test_a_fraction_that_is_not_a_number_is_one_line():
    with pytest.raises(ConfigError, match=r"data\.train_fraction='half' is not a valid float"):
        RunConfig.from_dict(tree(train_fraction="half"))


def test_the_data_grid_is_three_core_cells_on_each_half_of_the_split():
    import dataclasses

    from qat.orchestration.grid import expand_grid

    half = expand_grid(["grid=repro-data"])
    core = {c.run_key for c in expand_grid(["grid=repro", "model=mini-xs", "tokens_per_param=320"])}
    assert sorted((c.data.train_part, c.bits) for c in half) == [
        (part, bits) for part in ("leading", "spread") for bits in (1.0, 4.0, 16.0)
    ]
    for config in half:
        assert config.data.train_fraction == 0.5 and config.tracking.experiment == "repro"
        whole = dataclasses.replace(config, data=dataclasses.replace(config.data, train_fraction=1))
        assert whole.run_key in core  # its full-data pair is a cell of the core
