"""Overrides checked against conf/ before Hydra composes them: one line naming the likely key."""

from __future__ import annotations

import pytest

from qat.errors import ConfigError
from qat.orchestration.overrides import check_overrides, config_groups


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["bit=4"], "unknown key 'bit'; did you mean 'bits'?"),
        (["qat_fraction=0.5"], "unknown key 'qat_fraction'; did you mean 'qat_frac'?"),
        (["optim.lrr=1e-3"], "unknown key 'optim.lrr'; did you mean 'optim.lr'?"),
        (["data.sourc=x"], "unknown key 'data.sourc'; did you mean 'data.source'?"),
        (["init.sorce=hf:x"], "unknown key 'init.sorce'; did you mean 'init.source'?"),
        (["zzz=1"], "unknown key 'zzz'; allowed: bits, data, fusion, grid, init, model, "),
        (["model=nan"], "model=nan is not a model config; did you mean 'nano'? available: "),
        (["grid=smoke", "model=nano,tinyy"], "model=tinyy is not a model config; did you mean"),
        (["bits=["], "cannot parse the overrides: "),
    ],
)
def test_mistakes_are_one_line_with_the_likely_fix(overrides, message):
    with pytest.raises(ConfigError) as info:
        check_overrides(overrides)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    "overrides",
    [
        ["bits=1,2", "qat_frac=0.1,0.5", "model=nano,tiny", "tokens=2M"],
        ["grid=smoke", "optim.lr=1e-2", "data.source=/some/folder", "init.source=null"],
        ["+extra=1", "~seed", "hydra/launcher=slurm", "hydra.sweep.dir=x", "grid=null"],
    ],
)
def test_valid_overrides_pass(overrides):
    check_overrides(overrides)


def test_groups_are_read_from_conf():
    groups = config_groups()
    assert "nano" in groups["model"] and "smoke" in groups["grid"]
    assert "hydra" not in groups
