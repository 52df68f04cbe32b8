"""Grid expansion composes once per set of config-group choices: the cells must come out exactly
as composing each one with Hydra gives them."""

from __future__ import annotations

from collections.abc import Sequence

import hydra
import pytest
from hydra import compose, initialize_config_dir

from qat.config import RunConfig
from qat.errors import ConfigError
from qat.orchestration.grid import CONF_DIR, compose_each_cell, expand_grid


def assert_same_cells(overrides: Sequence[str], sample: int | None = None) -> list[RunConfig]:
    configs = expand_grid(overrides)
    count, reference = compose_each_cell(overrides, sample)
    assert len(configs) == count
    for i, config in reference.items():
        assert configs[i] == config, f"cell {i} of {' '.join(overrides)}"
        assert configs[i].run_key == config.run_key
    return configs


@pytest.mark.parametrize(
    ("overrides", "sample"),
    [
        (["grid=smoke"], None),
        # 600 and 840 cells: all expanded, a seeded sample (every model among them) composed
        # cell by cell, each composition taking ~0.2 s.
        (["grid=mini"], 24),
        (["grid=paper"], 40),
        # A part of a grid built on a shared settings file, budgets in tokens per parameter,
        # knobs of config groups swept.
        (["grid=repro-qat-phase"], 12),
    ],
    ids=["smoke", "mini", "paper", "repro-qat-phase"],
)
def test_grid_files_expand_as_hydra_composes_each_cell(overrides, sample):
    assert_same_cells(overrides, sample)


@pytest.mark.parametrize(
    "overrides",
    [
        ["model=nano,micro", "bits=2,4", "qat_frac=0.1,0.5", "optim.lr=1e-3,3e-3", "tokens=2M"],
        # Group choices after values, a group swept inside a grid, hydra settings (composed with
        # the choices), values that override what the chosen group files set.
        [
            "grid=smoke",
            "bits=16,2",
            "qat_frac=0.5",
            "data=bundled,bundled-large",
            "trainer=torch,deepspeed",
            "data.batch_size=8",
            "hydra/launcher=basic",
            "hydra.job.chdir=true",
        ],
        # Every kind of value Hydra's override grammar parses: counts, floats, booleans, null,
        # lists, an interpolation, quoting, and a dict merged into a group's node.
        [
            "tokens=600K,6e5",
            "fusion=true,false",
            "data.cache_dir=null",
            "optim.betas=[0.8,0.9]",
            "run_dir=runs-${data.source}",
            "tracking.experiment='a b'",
            "model={n_layers:3}",
        ],
    ],
    ids=["groups-and-values", "groups-inside-a-grid", "value-forms"],
)
def test_command_line_sweeps_expand_as_hydra_composes_each_cell(overrides):
    assert_same_cells(overrides)


def test_inside_a_running_hydra_as_the_multirun_callback_calls_it():
    _, reference = compose_each_cell(["grid=smoke"])
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        configs = expand_grid(["grid=smoke"], {"bits": "16,2,4,8", "qat_frac": "0.25,0.5"})
    assert configs == list(reference.values())


def test_overrides_beyond_a_plain_update_compose_the_cell_with_hydra():
    configs = assert_same_cells(
        ["grid=smoke", "bits=2,4", "++data.cache_dir=/tmp/shards", "~optim.weight_decay"]
    )
    assert {c.data.cache_dir for c in configs} == {"/tmp/shards"}


def test_a_grid_composes_once_per_set_of_group_choices(monkeypatch):
    calls: list[list[str]] = []

    def counting_compose(config_name, overrides, **kwargs):
        calls.append(list(overrides))
        return compose(config_name, overrides=overrides, **kwargs)

    monkeypatch.setattr(hydra, "compose", counting_compose)
    assert len(expand_grid(["grid=smoke", "model=nano,micro"])) == 16
    # The sweep parameters, then one composition per model.
    assert calls[1:] == [["grid=smoke", "model=nano"], ["grid=smoke", "model=micro"]]


def test_errors_are_hydras_and_the_configs():
    with pytest.raises(ConfigError, match="unknown key 'no_such_key'"):
        expand_grid(["grid=smoke", "no_such_key=1,2"])
    with pytest.raises(ConfigError, match="bits"):
        expand_grid(["grid=smoke", "bits=2,5"])


@pytest.mark.parametrize(
    ("overrides", "models"),
    [
        (["grid=repro", "model=mini-s", "tokens_per_param=20,80"], ["mini-s"]),
        (["grid=repro", "model=mini-xs,mini-s"], ["mini-xs", "mini-s"]),
        (["grid=repro"], ["mini-xs", "mini-s"]),
    ],
)
def test_node_grid_sub_grids_cover_exactly_the_cells_of_the_command_line(overrides, models):
    """One value on the command line narrows the grid file's sweep of that key: node_grid's
    sub-grids must not bring back the values it removed (they trained other models' cells)."""
    from qat.orchestration.node_workers import sub_grids, sweep_params

    params = sweep_params(overrides)
    grids = sub_grids(params, ["model", "seed"])
    assert grids == [[f"model={model}"] for model in models]
    cells = {c.run_key for c in expand_grid(overrides)}
    from_sub_grids = {c.run_key for grid in grids for c in expand_grid([*overrides, *grid])}
    assert from_sub_grids == cells
