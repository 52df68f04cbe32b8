"""Config parsing and validation: every bad value is one clear ConfigError."""

import dataclasses

import pytest

from qat.config import RunConfig, flatten
from qat.errors import ConfigError
from qat.units import format_count, parse_count


def tree(**overrides):
    base = {
        "bits": 4,
        "qat_frac": 0.3,
        "tokens": "2M",
        "fusion": False,
        "seed": 0,
        "run_dir": "runs",
        "model": {"name": "nano", "dim": 64, "n_layers": 2, "n_heads": 4, "ffn_dim": 176},
        "data": {"source": "bundled", "vocab_size": 8192, "seq_len": 128, "batch_size": 32},
        "trainer": {"device": "cpu", "progress": False},
        "tracking": {"uri": "sqlite:///x.db", "experiment": "e"},
    }
    base.update(overrides)
    return base


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2M", 2_000_000),
        ("1.5B", 1_500_000_000),
        ("2e6", 2_000_000),
        (2e6, 2_000_000),
        (123, 123),
        ("400K", 400_000),
        ("3t", 3 * 10**12),
    ],
)
def test_parse_count_accepts_suffixes_and_floats(text, expected):
    assert parse_count(text) == expected


@pytest.mark.parametrize("bad", ["-1", -1, 0, "lots", "2Q", True, float("nan")])
def test_parse_count_rejects_bad_values(bad):
    with pytest.raises(ConfigError, match="tokens"):
        parse_count(bad)


def test_format_count_round_trips_common_budgets():
    assert format_count(2_000_000) == "2M"
    assert parse_count(format_count(1_500_000_000)) == 1_500_000_000


def test_valid_config_builds_and_parses_tokens():
    config = RunConfig.from_dict(tree())
    assert config.tokens == 2_000_000
    assert config.bits == 4.0
    assert config.optim.betas == (0.9, 0.95)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"bits": 5}, r"bits=5 is not supported; allowed: 1, 1\.58, 2, 3, 4, 6, 8, 16"),
        ({"qat_frac": 1.2}, r"qat_frac=1\.2 must be in \[0, 1\)"),
        ({"qat_frac": 1.0}, r"qat_frac=1\.0 must be in \[0, 1\)"),
        ({"tokens": -1}, "tokens=-1 must be a positive"),
        ({"tokens": 1000}, "4 optimizer steps"),
        ({"fusion": "maybe"}, "fusion='maybe' must be true or false"),
        ({"mystery": 1}, "unknown key 'mystery'; allowed: bits, data, "),
        ({"bit": 4}, "unknown key 'bit'; did you mean 'bits'?"),
    ],
)
def test_bad_top_level_values_are_one_line_errors(override, message):
    with pytest.raises(ConfigError, match=message) as info:
        RunConfig.from_dict(tree(**override))
    assert "\n" not in str(info.value)


def test_unknown_group_key_names_the_allowed_keys():
    bad = tree()
    bad["optim"] = {"lr": 1e-3, "momentum": 0.9}
    with pytest.raises(ConfigError, match=r"unknown key 'optim\.momentum'; allowed: optim\.betas"):
        RunConfig.from_dict(bad)


def test_ternary_alias_and_fp16():
    assert RunConfig.from_dict(tree(bits="ternary")).bits == 1.58
    assert RunConfig.from_dict(tree(bits=16)).is_fp_only


def test_run_key_depends_on_science_only():
    base = RunConfig.from_dict(tree())
    moved = RunConfig.from_dict(
        tree(
            run_dir="elsewhere",
            tracking={"uri": "http://x", "experiment": "other"},
            trainer={"device": "cpu", "progress": True, "compile": True},
        )
    )
    assert base.run_key == moved.run_key
    for change in ({"bits": 2}, {"qat_frac": 0.5}, {"tokens": "3M"}, {"fusion": True}, {"seed": 1}):
        assert RunConfig.from_dict(tree(**change)).run_key != base.run_key
    other_lr = tree()
    other_lr["optim"] = {"lr": 1e-3}
    assert RunConfig.from_dict(other_lr).run_key != base.run_key


def test_fp_only_runs_share_a_key_whatever_the_qat_settings():
    a = RunConfig.from_dict(tree(bits=16, qat_frac=0.1, fusion=True))
    b = RunConfig.from_dict(tree(bits=16, qat_frac=0.5, fusion=False))
    assert a.run_key == b.run_key


def test_flatten_uses_dotted_keys():
    flat = flatten(dataclasses.asdict(RunConfig.from_dict(tree())))
    assert flat["model.dim"] == 64
    assert flat["bits"] == 4.0
