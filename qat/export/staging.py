"""An export folder appears whole or not at all: written in a hidden sibling, renamed into
place at the end, removed if anything fails (bad input writes nothing)."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from qat.export.errors import ExportError


@contextlib.contextmanager
def staged(out: Path) -> Iterator[Path]:
    out = Path(out)
    if out.exists():
        raise ExportError(f"{out} exists already; choose a new --out folder or remove it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
