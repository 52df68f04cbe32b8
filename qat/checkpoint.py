"""Atomic checkpoints: ``<run dir>/checkpoints/<tokens>/``.

A checkpoint is written into a hidden temporary folder and renamed into place once its last file
is on disk, and renamed out of place before it is deleted, so a folder named by a token count is
always complete, whenever the process is killed. Loading uses
``weights_only=True``: a checkpoint never unpickles arbitrary objects.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

MODEL_FILE = "model.pt"
OPTIMIZER_FILE = "optimizer.pt"
RNG_FILE = "rng.pt"
STATE_FILE = "state.json"
COMPLETE_MARKER = "COMPLETE"
TRASH_PREFIX = ".trash-"  # a checkpoint being deleted: never listed


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    tokens: int

    def state(self) -> dict[str, Any]:
        return json.loads((self.path / STATE_FILE).read_text())

    def model_state(self) -> dict[str, torch.Tensor]:
        return torch.load(self.path / MODEL_FILE, map_location="cpu", weights_only=True)

    def optimizer_state(self) -> dict[str, Any]:
        return torch.load(self.path / OPTIMIZER_FILE, map_location="cpu", weights_only=True)

    def restore_rng(self) -> None:
        rng = torch.load(self.path / RNG_FILE, map_location="cpu", weights_only=True)
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(list(rng["cuda"]))


def save_checkpoint(
    checkpoint_dir: Path,
    tokens: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    keep: int,
) -> Checkpoint:
    """Write a complete checkpoint for ``tokens`` seen, then prune all but the newest ``keep``."""
    tmp = staging_dir(checkpoint_dir, tokens, f"-{os.getpid()}")
    torch.save(model.state_dict(), tmp / MODEL_FILE)
    torch.save(optimizer.state_dict(), tmp / OPTIMIZER_FILE)
    return commit_checkpoint(tmp, tokens, state, keep)


def save_weights(
    checkpoint_dir: Path, tokens: int, weights: dict[str, torch.Tensor], state: dict[str, Any]
) -> Checkpoint:
    """A checkpoint of the model's weights alone (a packed member's final weights, for export):
    nothing to resume from, every other checkpoint of the folder pruned."""
    tmp = staging_dir(checkpoint_dir, tokens, f"-{os.getpid()}")
    torch.save(weights, tmp / MODEL_FILE)
    return commit_checkpoint(tmp, tokens, state, keep=1)


def staging_dir(checkpoint_dir: Path, tokens: int, suffix: str = "") -> Path:
    """An empty hidden folder to write a checkpoint into (complete only once committed)."""
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    tmp = checkpoint_dir / f".tmp-{tokens}{suffix}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return tmp


def commit_checkpoint(tmp: Path, tokens: int, state: dict[str, Any], keep: int) -> Checkpoint:
    """Add the RNG and state files to a staged checkpoint, mark it complete, rename it into
    place and prune all but the newest ``keep`` (pinned checkpoints stay)."""
    checkpoint_dir = tmp.parent
    final = checkpoint_dir / str(tokens)
    torch.save(_rng_state(), tmp / RNG_FILE)
    (tmp / STATE_FILE).write_text(json.dumps({"tokens": tokens, **state}, indent=2))
    (tmp / COMPLETE_MARKER).write_text("")
    _fsync_dir(tmp)
    if final.exists():  # same tokens written again (a resumed run re-saving): replace it
        discard(final)
    os.rename(tmp, final)
    _fsync_dir(checkpoint_dir)
    for old in list_checkpoints(checkpoint_dir)[:-keep]:
        if not _pinned(old):
            discard(old.path)
    for leftover in checkpoint_dir.glob(f"{TRASH_PREFIX}*"):  # a kill in the middle of a delete
        shutil.rmtree(leftover, ignore_errors=True)
    return Checkpoint(final, tokens)


def discard(path: Path) -> None:
    """Delete a checkpoint folder without ever leaving a half-deleted one under its token name
    (a kill in the middle of rmtree did, and the next run then read a "complete" checkpoint
    with missing files): renamed out of the listing first, which is atomic, then deleted."""
    trash = path.with_name(f"{TRASH_PREFIX}{path.name}-{os.getpid()}")
    try:
        os.rename(path, trash)
    except FileNotFoundError:  # another process pruned it first
        return
    shutil.rmtree(trash, ignore_errors=True)


def _pinned(checkpoint: Checkpoint) -> bool:
    try:
        return bool(checkpoint.state().get("pinned", False))
    except (OSError, ValueError):  # unreadable: left half-deleted by an earlier version
        return False


def list_checkpoints(checkpoint_dir: Path) -> list[Checkpoint]:
    """Complete checkpoints, oldest first; half-written temporary folders are ignored."""
    if not checkpoint_dir.is_dir():
        return []
    found = [
        Checkpoint(path, int(path.name))
        for path in checkpoint_dir.iterdir()
        if path.is_dir() and path.name.isdigit() and (path / COMPLETE_MARKER).exists()
    ]
    return sorted(found, key=lambda checkpoint: checkpoint.tokens)


def latest_checkpoint(checkpoint_dir: Path) -> Checkpoint | None:
    checkpoints = list_checkpoints(checkpoint_dir)
    return checkpoints[-1] if checkpoints else None


def _rng_state() -> dict[str, Any]:
    # Only torch's generators feed training (init, data order has its own seeded generator).
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
