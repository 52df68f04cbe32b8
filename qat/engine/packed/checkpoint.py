"""A pack's checkpoints: ``<pack dir>/checkpoints/<step>/pack.pt``, written whole or not at all.

One file holds every member's weights, moments and schedule position, the data cursors and the
trunks' logged curves, so the pack resumes every unfinished member from one consistent step.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch

PACK_FILE = "pack.pt"
COMPLETE_MARKER = "COMPLETE"


def save_pack(checkpoint_dir: Path, step: int, state: dict[str, Any], keep: int) -> Path:
    """Write ``state`` for ``step`` in a hidden folder, rename it into place, keep ``keep``."""
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    final = checkpoint_dir / f"{step:09d}"
    tmp = checkpoint_dir / f".tmp-{step}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    torch.save(state, tmp / PACK_FILE)
    (tmp / COMPLETE_MARKER).touch()
    if final.exists():  # a resumed pack saving the same step again
        shutil.rmtree(final)
    tmp.rename(final)
    for old in list_packs(checkpoint_dir)[:-keep]:
        trash = old.with_name(f".trash-{old.name}-{os.getpid()}")
        old.rename(trash)
        shutil.rmtree(trash, ignore_errors=True)
    return final


def list_packs(checkpoint_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not checkpoint_dir.is_dir():
        return []
    found = [
        path
        for path in checkpoint_dir.iterdir()
        if path.name.isdigit() and (path / COMPLETE_MARKER).exists()
    ]
    return sorted(found, key=lambda path: int(path.name))


def load_pack(path: Path) -> dict[str, Any]:
    return torch.load(path / PACK_FILE, map_location="cpu", weights_only=True)
