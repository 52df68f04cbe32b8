"""Human-friendly counts (tokens, parameters, FLOPs): ``2M``, ``1.5B``, ``2.5k``, ``2e6``, plain
integers. The one parser of sizes: the trainer's config and every CLI that takes a count use it.
"""

from __future__ import annotations

import re

from qat.errors import ConfigError

_SUFFIXES = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9, "T": 10**12}
_PATTERN = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([KMBGT]?)\s*$", re.IGNORECASE)


ACCEPTED = "e.g. 2000000, 2e6, 2M, 2.5k or 1.5B (suffixes K M B/G T, case-insensitive)"


def parse_count(value: object, name: str = "tokens", unit: str = "tokens") -> int:
    """Parse a positive count given as int, float (2e6) or string with suffix (2M, 1.5B, 2.5k).

    `name` is how the caller's user wrote the value (a config key, or a CLI flag such as
    ``--tokens``), `unit` what it counts; an error is one line that names it and the accepted
    forms.
    """
    if isinstance(value, bool):
        raise ConfigError(f"{name}={value!r} is not a count; use {ACCEPTED}")
    if isinstance(value, int | float):
        number = float(value)
    else:
        match = _PATTERN.match(str(value))
        if match is None:
            raise ConfigError(f"{name}={value!r} is not a count; use {ACCEPTED}")
        number = float(match.group(1)) * _SUFFIXES[match.group(2).upper()]
    if not number > 0 or number != number or number == float("inf"):
        raise ConfigError(f"{name}={value!r} must be a positive number of {unit}; use {ACCEPTED}")
    return round(number)


def format_count(value: float) -> str:
    """Render a count compactly (2000000 -> '2M'), for tables and names."""
    for suffix, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.4g}{suffix}"
    return f"{value:.4g}"
