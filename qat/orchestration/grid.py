"""Expand a Hydra sweep (grid config + command-line overrides) into validated run configs.

The same expansion as Hydra's basic sweeper, done ahead of time so that the trunk planner can see
every cell before the first one trains.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from qat.config import RunConfig

if TYPE_CHECKING:
    from hydra.core.override_parser.types import Override

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
CONFIG_NAME = "config"

Compose = Callable[..., DictConfig]


def cli_overrides(argv: Sequence[str], doc: str | None) -> list[str] | None:
    """A grid command's Hydra overrides (``-m`` accepted as train.py takes it), or None after
    printing ``doc`` for -h/--help."""
    if any(arg in ("-h", "--help") for arg in argv):
        print(doc)
        return None
    return [arg for arg in argv if arg not in ("-m", "--multirun")]


def expand_grid(
    overrides: Sequence[str], sweeper_params: dict[str, str] | None = None
) -> list[RunConfig]:
    """All cells of the sweep given by ``overrides`` (e.g. ``["grid=smoke", "bits=2,4"]``).

    ``sweeper_params`` are the grid file's ``hydra.sweeper.params``; when None they are read by
    composing the config first.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException

    from qat.errors import ConfigError
    from qat.orchestration.overrides import check_overrides

    check_overrides(overrides)  # a mistyped key or option: one line naming the likely one
    try:
        if GlobalHydra.instance().is_initialized():
            return _expand(list(overrides), sweeper_params, compose)
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return _expand(list(overrides), sweeper_params, compose)
    except (HydraException, OmegaConfBaseException) as error:  # what Hydra refuses, in one line
        raise ConfigError((str(error).strip().splitlines() or [type(error).__name__])[0]) from None


def compose_each_cell(
    overrides: Sequence[str], sample: int | None = None
) -> tuple[int, dict[int, RunConfig]]:
    """The sweep's cell count and its cells, each composed on its own with Hydra (``sample``
    of them, chosen with a fixed seed, when given): the slow, plainly exact path that
    :func:`expand_grid` is checked and timed against."""
    import random

    from hydra import compose, initialize_config_dir
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    parsed = parser.parse_overrides(list(overrides))
    fixed = [str(o.input_line) for o in parsed if not o.is_sweep_override()]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        params = compose(CONFIG_NAME, overrides=fixed, return_hydra_config=True).hydra.sweeper
        lines = [f"{k}={v}" for k, v in (params.get("params") or {}).items()] + list(overrides)
        (cells,) = BasicSweeper.split_arguments(parser.parse_overrides(lines), None)
        indices: Sequence[int] = range(len(cells))
        if sample is not None:
            indices = sorted(random.Random(0).sample(indices, sample))
        return len(cells), {i: _config(compose(CONFIG_NAME, overrides=cells[i])) for i in indices}


def cell_configs(cells: Sequence[Sequence[str]]) -> list[RunConfig]:
    """The configs of cells given one by one (each a full override list, as a launcher gets
    them), composed once per set of group choices; inside a running Hydra its config search path
    is used."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        composer = _CellComposer(compose)
        return [_config(composer(cell)) for cell in cells]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        composer = _CellComposer(compose)
        return [_config(composer(cell)) for cell in cells]


def _expand(
    overrides: list[str], sweeper_params: dict[str, str] | None, compose: Compose
) -> list[RunConfig]:
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    if sweeper_params is None:
        fixed = [
            o.input_line for o in parser.parse_overrides(overrides) if not o.is_sweep_override()
        ]
        hydra_cfg = compose(CONFIG_NAME, overrides=fixed, return_hydra_config=True)
        sweeper_params = dict(hydra_cfg.hydra.sweeper.get("params") or {})
    lines = [f"{key}={value}" for key, value in sweeper_params.items()] + overrides
    (cells,) = BasicSweeper.split_arguments(parser.parse_overrides(lines), None)
    composer = _CellComposer(compose)
    return [_config(composer(cell)) for cell in cells]


class _CellComposer:
    """Each cell's composed config, as ``compose(CONFIG_NAME, overrides=cell)`` returns it, with
    one Hydra composition per distinct set of config-group choices rather than one per cell.

    Hydra composes a config in two stages: group choices (``model=nano``) and ``hydra.*`` settings
    pick and merge the config files, then the remaining overrides are applied in order, each a
    plain ``OmegaConf.update(cfg, key, Override.value(), merge=True)``. The cells of a grid share a
    few group choices and differ in values, so the first stage is composed once per choice set and
    cached, and each cell's value overrides are applied to a copy with that same call. ``hydra.*``
    overrides change only the ``hydra`` node (which compose drops) or where configs are found, so
    they are composed with the choices. Overrides whose Hydra semantics differ from a plain update
    (``+key=``, ``++key=``, ``~key``, ``key@package=``), or a value the update rejects, make that
    cell a plain Hydra composition, which also gives Hydra's own error message.
    """

    def __init__(self, compose: Compose) -> None:
        from hydra.core.global_hydra import GlobalHydra
        from hydra.core.override_parser.overrides_parser import OverridesParser

        self._compose = compose
        self._loader = GlobalHydra.instance().config_loader()
        self._parser = OverridesParser.create()
        self._parsed: dict[str, Override] = {}
        self._child_groups: dict[str, set[str]] = {}
        self._bases: dict[tuple[str, ...], DictConfig] = {}

    def __call__(self, cell: Sequence[str]) -> DictConfig:
        split = self._split(cell)
        if split is None:
            return self._compose(CONFIG_NAME, overrides=list(cell))
        choices, values = split
        base = self._bases.get(choices)
        if base is None:
            base = self._bases[choices] = self._compose(CONFIG_NAME, overrides=list(choices))
        cfg = copy.deepcopy(base)
        try:
            for override in values:
                OmegaConf.update(cfg, override.key_or_group, override.value(), merge=True)
        except OmegaConfBaseException:
            return self._compose(CONFIG_NAME, overrides=list(cell))
        return cfg

    def _split(self, cell: Sequence[str]) -> tuple[tuple[str, ...], list[Override]] | None:
        """The cell's composition-stage overrides (in order) and its value overrides, or None
        when some override is neither."""
        from hydra.core.override_parser.types import OverrideType

        choices: list[str] = []
        values: list[Override] = []
        for line in cell:
            override = self._parse(line)
            if override.is_hydra_override() or self._is_group_choice(override):
                choices.append(line)
            elif override.type is OverrideType.CHANGE and override.package is None:
                values.append(override)
            else:
                return None
        return tuple(choices), values

    def _parse(self, line: str) -> Override:
        # A grid repeats each value across many cells; parsing is the costly part of an override.
        override = self._parsed.get(line)
        if override is None:
            override = self._parsed[line] = self._parser.parse_override(line)
        return override

    def _is_group_choice(self, override: Override) -> bool:
        """Hydra's own test: a key naming a config group is a choice unless its value is a dict
        (which is merged into the group's node like any value)."""
        return not isinstance(override.value(), dict) and self._group_exists(override.key_or_group)

    def _group_exists(self, key: str) -> bool:
        from hydra.core.object_type import ObjectType

        parent, _, name = key.rpartition("/")
        children = self._child_groups.get(parent)
        if children is None:
            # Asked with the primary config so that a search path it adds counts, as in compose.
            options = self._loader.get_group_options(
                parent, results_filter=ObjectType.GROUP, config_name=CONFIG_NAME
            )
            children = self._child_groups[parent] = set(options)
        return name in children


def _config(cfg: DictConfig) -> RunConfig:
    tree = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(tree, dict)
    return RunConfig.from_dict(
        {k: v for k, v in cast("dict[str, Any]", tree).items() if k != "hydra"}
    )
