"""A cell's claim: at most one live job trains a run key at a time.

The claim is ``<run dir>/claim.json`` with the owner (SLURM job id, else host:pid) and a
heartbeat that the training loop refreshes. A claim is dead, and a later job may take the cell
over, when its owner is known to be gone (a process of this host that no longer exists, a SLURM
job no longer in squeue) or, failing that, when its heartbeat is older than ``ttl_s``: no dead
job holds a cell for long.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from contextlib import AbstractContextManager
from pathlib import Path

from qat.errors import QatError
from qat.locks import file_lock

DEFAULT_TTL_S = 900.0
REFRESH_EVERY_S = 30.0


class CellBusy(QatError):
    """Another live job holds this cell."""


def owner_id() -> str:
    job = os.environ.get("SLURM_ARRAY_JOB_ID")
    if job:
        return f"slurm:{job}_{os.environ.get('SLURM_ARRAY_TASK_ID', '0')}"
    if os.environ.get("SLURM_JOB_ID"):
        return f"slurm:{os.environ['SLURM_JOB_ID']}"
    return f"{socket.gethostname()}:{os.getpid()}"


def owner_is_gone(owner: str) -> bool:
    """True when the owner is certainly dead; False when alive or unknown (then the TTL rules)."""
    if owner.startswith("slurm:"):
        try:
            out = subprocess.run(
                ["squeue", "-h", "-r", "-o", "%i"], capture_output=True, text=True, timeout=30
            )
        except (FileNotFoundError, subprocess.TimeoutExpired):
            return False
        return out.returncode == 0 and owner[len("slurm:") :] not in out.stdout.split()
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class Claim:
    def __init__(self, run_dir: Path, ttl_s: float = DEFAULT_TTL_S) -> None:
        self.path = run_dir / "claim.json"
        self.ttl_s = ttl_s
        self.owner = owner_id()
        self._last_refresh = 0.0

    def holder(self) -> tuple[str, float] | None:
        """(owner, seconds since its heartbeat) of a live claim, else None."""
        try:
            claim = json.loads(self.path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        age = time.time() - float(claim["heartbeat"])
        if age >= self.ttl_s or owner_is_gone(claim["owner"]):
            return None
        return claim["owner"], age

    def acquire(self) -> None:
        with self._locked():
            held = self.holder()
            if held is not None and held[0] != self.owner:
                raise CellBusy(
                    f"run {self.path.parent.name} is being trained by {held[0]} "
                    f"(heartbeat {held[1]:.0f} s ago)"
                )
            self._write()

    def refresh(self) -> None:
        if time.time() - self._last_refresh >= REFRESH_EVERY_S:
            self._write()

    def release(self) -> None:
        with self._locked():
            held = self.holder()
            if held is not None and held[0] == self.owner:
                self.path.unlink(missing_ok=True)

    def _write(self) -> None:
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps({"owner": self.owner, "heartbeat": time.time()}))
        tmp.replace(self.path)
        self._last_refresh = time.time()

    def _locked(self) -> AbstractContextManager[None]:
        return file_lock(self.path.parent / "claim.lock")
