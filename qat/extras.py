"""Optional dependencies, each behind a pyproject extra; `make setup` installs them all.

A missing one is a :class:`MissingExtraError`, which the entry points print as one line naming
the extra to install.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from qat.errors import QatError

# extra -> how to install it by hand (DeepSpeed's build must see the installed torch).
INSTALL = {
    "deepspeed": "DS_BUILD_OPS=0 pip install --no-build-isolation -e '.[deepspeed]'",
    "server": "pip install -e '.[server]'",
    "hf": "pip install -e '.[hf]'",
}


class MissingExtraError(QatError, ImportError):
    """An optional dependency is not installed."""


def require(module: str, extra: str, needed_for: str) -> ModuleType:
    """Import `module`, or raise one line naming `extra`, the pyproject extra that provides it."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as error:
        if error.name != module.split(".")[0]:
            raise  # the package is there but a dependency of its own is not: its error says which
        raise MissingExtraError(
            f"{needed_for} needs {module!r}, which is not installed: install the '{extra}' extra "
            f"(make setup, or {INSTALL[extra]})"
        ) from None
