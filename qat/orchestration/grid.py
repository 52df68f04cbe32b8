"""Expand a Hydra sweep (grid config + command-line overrides) into validated run configs.

The same expansion as Hydra's basic sweeper, done ahead of time so that the trunk planner can see
every cell before the first one trains.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from qat.config import RunConfig

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


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

    if GlobalHydra.instance().is_initialized():
        return _expand(list(overrides), sweeper_params, compose)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return _expand(list(overrides), sweeper_params, compose)


def _expand(overrides: list[str], sweeper_params, compose) -> list[RunConfig]:
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    if sweeper_params is None:
        fixed = [
            o.input_line for o in parser.parse_overrides(overrides) if not o.is_sweep_override()
        ]
        hydra_cfg = compose("config", overrides=fixed, return_hydra_config=True)
        sweeper_params = dict(hydra_cfg.hydra.sweeper.get("params") or {})
    lines = [f"{key}={value}" for key, value in sweeper_params.items()] + overrides
    (cells,) = BasicSweeper.split_arguments(parser.parse_overrides(lines), None)
    return [_config(compose("config", overrides=cell)) for cell in cells]


def _config(cfg: DictConfig) -> RunConfig:
    tree = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(tree, dict)
    return RunConfig.from_dict({k: v for k, v in tree.items() if k != "hydra"})
