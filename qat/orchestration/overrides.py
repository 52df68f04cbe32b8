"""Command-line overrides checked against the config before Hydra composes it.

Hydra's own messages for a mistyped key (``Could not override 'bit'. To append to your config
use +bit=4``) or an unknown group option (22 lines of options and search paths) teach the wrong
fix; these checks give one line with the likely intended key or the allowed options instead.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import OmegaConf

from qat.config import SECTIONS
from qat.errors import ConfigError, did_you_mean, unknown_key

if TYPE_CHECKING:
    from hydra.core.override_parser.types import Override

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
# A null grid (the default) or null init.source are values, not options of a group.
_NULL_OPTIONS = frozenset({"null", "None"})


def check_overrides(overrides: Sequence[str], conf_dir: Path = CONF_DIR) -> None:
    """ConfigError (one line) for the first override naming a key or group option that the
    config does not have; ``+key``/``++key``/``~key`` and ``hydra.*`` are Hydra's to judge."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except OverrideParseException as error:
        raise ConfigError(f"cannot parse the overrides: {_first_line(error)}") from None
    groups = config_groups(conf_dir)
    keys = top_level_keys(conf_dir)
    for override in parsed:
        key = override.key_or_group
        if override.is_add() or override.is_force_add() or override.is_delete():
            continue
        if key == "hydra" or key.startswith(("hydra.", "hydra/")) or override.package:
            continue
        if key in groups:
            _check_options(key, _values(override), groups[key])
        else:
            _check_key(key, keys)


@cache
def config_groups(conf_dir: Path = CONF_DIR) -> dict[str, tuple[str, ...]]:
    """Each config group of ``conf/`` (not Hydra's own) and its options, sorted."""
    return {
        folder.name: tuple(sorted(p.stem for p in folder.glob("*.yaml")))
        for folder in sorted(conf_dir.iterdir())
        if folder.is_dir() and folder.name != "hydra"
    }


@cache
def top_level_keys(conf_dir: Path = CONF_DIR) -> dict[str, tuple[str, ...]]:
    """Every top-level key an override may set, with its sub-keys (empty for plain values)."""
    primary = OmegaConf.to_container(OmegaConf.load(conf_dir / "config.yaml"))
    assert isinstance(primary, dict)
    keys: dict[str, tuple[str, ...]] = {}
    for name, node in primary.items():
        if name not in ("defaults", "hydra"):
            keys[str(name)] = tuple(node) if isinstance(node, dict) else ()
    for group in config_groups(conf_dir):
        section = SECTIONS.get(group)
        keys[group] = tuple(f.name for f in dataclasses.fields(section)) if section else ()
    return keys


def _check_key(key: str, keys: dict[str, tuple[str, ...]]) -> None:
    top, _, rest = key.partition(".")
    if top not in keys:
        raise unknown_key(key, keys)
    sub_keys = keys[top]
    if rest and sub_keys:  # a key inside a group or a section (optim.lr, init.source)
        name = rest.split(".")[0]
        if name not in sub_keys:
            raise unknown_key(key, sub_keys, section=top)


def _check_options(group: str, values: list[str], options: tuple[str, ...]) -> None:
    for value in values:
        # A dict value (model={n_layers:3}) merges into the group's node rather than naming one.
        if value in options or value in _NULL_OPTIONS or value.startswith("{"):
            continue
        guess = did_you_mean(value, options)
        hint = f"did you mean '{guess}'? " if guess else ""
        raise ConfigError(
            f"{group}={value} is not a {group} config; {hint}available: {', '.join(options)}"
        )


def _values(override: Override) -> list[str]:
    if override.is_sweep_override():
        try:
            return list(override.sweep_string_iterator())
        except Exception:  # a range or glob over options: left to Hydra
            return []
    value = override.value()
    return [] if value is None else [str(value)]


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
