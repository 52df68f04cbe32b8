"""A cell's claim: at most one live process trains a run key at a time.

The claim is ``<run dir>/claim.json``: who holds it (the machine, the pid and that pid's start
time, the SLURM job and its attempt) and a heartbeat. Whoever trains a cell holds its claim for the
whole claimed section, waits on locks and evaluations included::

    claim = Claim(run_dir)
    claim.acquire()        # CellBusy if another live owner holds the cell
    try:
        ...                # a daemon thread rewrites the heartbeat every ``heartbeat_s``
    finally:
        claim.release()    # stops that thread, then removes claim.json

or ``with Claim(run_dir).held(): ...``, which does the same.

Whether someone else's claim is live is asked of its owner first; the heartbeat decides only
where the owner cannot be asked (see :func:`owner_alive`):

1. an owner on this machine (same boot, same pid namespace) is live while its pid exists and
   started when the claim says; a pid that is gone, a zombie or a later process under the same
   number is gone at once;
2. an owner elsewhere in a SLURM job: an earlier attempt of our own (requeued) job is gone; any
   other job is gone once squeue no longer lists it, and live while squeue shows it running;
3. anything else (another host without SLURM, squeue unavailable, a job pending after a requeue,
   another process of our own job on another node): live while its heartbeat is younger than
   ``ttl_s``.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qat.errors import QatError
from qat.locks import file_lock

DEFAULT_TTL_S = 900.0
REFRESH_EVERY_S = 30.0
SQUEUE_TIMEOUT_S = 30.0

# squeue states in which a job's processes may exist (SUSPENDED and STOPPED ones resume, so their
# claims hold). A job pending, requeued or still configuring runs nothing, but it may come back to
# its cell: the heartbeat decides for it.
_RUNNING_STATES = frozenset(
    {"RUNNING", "COMPLETING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT", "RESIZING"}
)


class CellBusy(QatError):
    """Another live job holds this cell."""


@dataclass(frozen=True)
class Owner:
    """Who holds a claim, in the terms its liveness can be checked in."""

    host: str
    machine: str | None  # where pids mean the same process: see this_machine()
    pid: int | None
    start: int | None  # the pid's start time (clock ticks after boot), when /proc tells it
    job: str | None  # SLURM job id, ``<array job>_<task>`` for an array task
    restart: int  # SLURM_RESTART_COUNT: which attempt of the job, 0 before any requeue

    @classmethod
    def me(cls) -> Owner:
        pid = os.getpid()
        stat = _stat(pid)
        array = os.environ.get("SLURM_ARRAY_JOB_ID")
        if array:
            job: str | None = f"{array}_{os.environ.get('SLURM_ARRAY_TASK_ID', '0')}"
        else:
            job = os.environ.get("SLURM_JOB_ID") or None
        restart = os.environ.get("SLURM_RESTART_COUNT", "0")
        return cls(
            host=socket.gethostname(),
            machine=this_machine(),
            pid=pid,
            start=None if stat is None else stat[1],
            job=job,
            restart=int(restart) if restart.isdigit() else 0,
        )

    def describe(self) -> str:
        where = f"{self.host} pid {self.pid}"
        return f"SLURM job {self.job} ({where})" if self.job else where

    def to_json(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "machine": self.machine,
            "pid": self.pid,
            "start": self.start,
            "job": self.job,
            "restart": self.restart,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Owner:
        """Whatever a claim file says, checked: a field that is missing or of the wrong type (a
        claim written before these fields existed) reads as unknown, which leaves it to the TTL."""

        def text(key: str) -> str | None:
            value = data.get(key)
            return value if isinstance(value, str) and value else None

        def number(key: str) -> int | None:
            value = data.get(key)
            return value if isinstance(value, int) and not isinstance(value, bool) else None

        pid = number("pid")
        return cls(
            host=text("host") or "?",
            machine=text("machine"),
            # os.kill(0 or a negative pid) signals whole process groups: never ask about those.
            pid=pid if pid is not None and pid > 0 else None,
            start=number("start"),
            job=text("job"),
            restart=number("restart") or 0,
        )


def this_machine() -> str:
    """What makes a pid name one process: this boot of the kernel and this pid namespace.

    A host name does not: containers on one node may share it while each sees its own pids, and a
    rebooted node reuses every pid. Without /proc (not Linux) the host name is all there is.
    """
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        return f"host {socket.gethostname()}"
    return f"{boot} {namespace}"


def _stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks after boot) of a process, from /proc; None where
    /proc does not show it (not Linux, gone, or another user's under hidepid)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
        # The command name in parentheses may hold spaces and parentheses: split after the last.
        fields = text[text.rindex(")") + 2 :].split()
        return fields[0], int(fields[19])
    except (OSError, ValueError, IndexError):
        return None


def process_alive(pid: int, start: int | None) -> bool:
    """Whether process ``pid`` of this machine exists and is the one that started at ``start``."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    stat = _stat(pid)
    if stat is None:
        # No /proc to compare start times with (or the process hides there): that the pid
        # exists must do.
        return True
    state, started = stat
    # A zombie has finished and only waits for its parent to collect its status.
    return state not in ("Z", "X") and (start is None or started == start)


def squeue_states() -> dict[str, str] | None:
    """Every job squeue lists, job id to state (array tasks one by one); None without squeue."""
    try:
        out = subprocess.run(
            ["squeue", "-h", "-r", "-o", "%i %T"],
            capture_output=True,
            text=True,
            timeout=SQUEUE_TIMEOUT_S,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return dict(line.split(maxsplit=1) for line in out.stdout.splitlines() if " " in line)


def owner_alive(owner: Owner, me: Owner) -> bool | None:
    """True when ``owner`` certainly runs, False when it is certainly gone, None when ``me`` cannot
    tell (then the heartbeat's age decides)."""
    if owner.pid is not None and owner.machine is not None and owner.machine == me.machine:
        return process_alive(owner.pid, owner.start)
    if owner.job is None:
        return None
    if owner.job == me.job:
        # squeue lists our own job as running whoever else in it holds the claim. A requeue ends
        # every process of the attempt it ends, so an earlier attempt's claim is dead.
        return False if owner.restart < me.restart else None
    states = squeue_states()
    if states is None:
        return None
    state = states.get(owner.job)
    if state is None:
        return False
    return True if state in _RUNNING_STATES else None


@dataclass(frozen=True)
class _Record:
    owner: Owner
    who: str  # how messages name the owner
    token: str  # which Claim object wrote it: two in one process are two owners
    heartbeat: float


class Claim:
    """The claim on one run folder; see the module's docstring for how to hold it.

    ``ttl_s`` is how old a heartbeat may be before a claim whose owner cannot be asked counts as
    dead; ``heartbeat_s`` (default: ``REFRESH_EVERY_S``, or a quarter of a shorter TTL) is how
    often a held claim's heartbeat is rewritten. Readers on other hosts apply their own TTL, so
    keep the heartbeat far below every TTL in use.
    """

    def __init__(
        self, run_dir: Path, ttl_s: float = DEFAULT_TTL_S, heartbeat_s: float | None = None
    ) -> None:
        self.path = run_dir / "claim.json"
        self.ttl_s = ttl_s
        self.heartbeat_s = min(REFRESH_EVERY_S, ttl_s / 4) if heartbeat_s is None else heartbeat_s
        self._token = secrets.token_hex(8)
        # Guards _held between the heartbeat thread and release(): once release() has cleared it,
        # the thread writes nothing more, so it never brings back a claim that was let go.
        self._guard = threading.Lock()
        self._held = False
        self._owner: Owner | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def holder(self) -> tuple[str, float] | None:
        """(who, seconds since its heartbeat) of the live claim on this cell, else None."""
        record = self._read()
        if record is None:
            return None
        age = time.time() - record.heartbeat
        if record.token != self._token:
            alive = owner_alive(record.owner, Owner.me())
            if alive is False or (alive is None and age >= self.ttl_s):
                return None
        return record.who, age

    def acquire(self) -> None:
        """Take the cell and keep it live until release(): raise CellBusy if another live owner
        holds it, else write the claim and start the heartbeat thread."""
        if self._thread is not None:
            raise RuntimeError(f"{self.path} is already held by this Claim")
        with self._locked():
            held = self.holder()
            if held is not None:
                raise CellBusy(
                    f"run {self.path.parent.name} is being trained by {held[0]} "
                    f"(heartbeat {held[1]:.0f} s ago)"
                )
            self._owner = Owner.me()
            self._write()
            self._held = True
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._beat,
            args=(self._stop,),
            name=f"claim heartbeat {self.path.parent.name}",
            daemon=True,  # a process that ends without release() must not wait for it
        )
        self._thread.start()

    def release(self) -> None:
        """Stop the heartbeat and remove the claim if it is still ours; does nothing when not
        held, so that it can sit in any ``finally``."""
        with self._guard:
            was_held, self._held = self._held, False
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=REFRESH_EVERY_S)
        if not was_held:
            return
        with self._locked():
            record = self._read()
            if record is not None and record.token == self._token:
                self.path.unlink(missing_ok=True)

    @contextmanager
    def held(self) -> Iterator[Claim]:
        """Hold the claim for the block: acquire() on entry (CellBusy escapes before the block
        runs), release() on any exit, exceptions and KeyboardInterrupt included."""
        self.acquire()
        try:
            yield self
        finally:
            self.release()

    def _beat(self, stop: threading.Event) -> None:
        run = self.path.parent.name
        failing = False
        while not stop.wait(self.heartbeat_s):
            try:
                if not self._refresh():
                    print(
                        f"[{run}] claim taken over by {self._holder_name()}: heartbeat stopped",
                        file=sys.stderr,
                        flush=True,
                    )
                    return
            except Exception as error:
                # One failed beat (a full disk, a shared file system hiccup) must not end the
                # heartbeat: the next one may get through, well within the TTL.
                if not failing:
                    print(
                        f"[{run}] claim heartbeat failed ({error!r}); retrying every "
                        f"{self.heartbeat_s:g} s",
                        file=sys.stderr,
                        flush=True,
                    )
                failing = True
                continue
            if failing:
                print(f"[{run}] claim heartbeat written again", file=sys.stderr, flush=True)
                failing = False

    def _refresh(self) -> bool:
        """Rewrite the heartbeat; False when someone else's claim has replaced ours."""
        with self._guard:
            if not self._held:
                return True
            with self._locked():
                record = self._read()
                if record is not None and record.token != self._token:
                    # Another launcher judged us dead and took the cell: writing over its claim
                    # would give the cell two owners.
                    self._held = False
                    return False
                self._write()  # also puts back a claim file that was deleted under us
        return True

    def _holder_name(self) -> str:
        record = self._read()
        return "nobody" if record is None else record.who

    def _read(self) -> _Record | None:
        try:
            data = json.loads(self.path.read_text())
            heartbeat = float(data["heartbeat"])
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return None
        owner = Owner.from_json(data)
        who = data.get("owner")
        return _Record(
            owner=owner,
            who=who if isinstance(who, str) else owner.describe(),
            token=str(data.get("token", "")),
            heartbeat=heartbeat,
        )

    def _write(self) -> None:
        assert self._owner is not None
        record = {
            "owner": self._owner.describe(),
            **self._owner.to_json(),
            "token": self._token,
            "heartbeat": time.time(),
        }
        # Written aside and renamed over: a reader never sees half a claim.
        tmp = self.path.with_name(f"{self.path.name}.{self._token}.tmp")
        try:
            tmp.write_text(json.dumps(record))
            tmp.replace(self.path)
        finally:
            tmp.unlink(missing_ok=True)

    def _locked(self) -> AbstractContextManager[None]:
        return file_lock(self.path.parent / "claim.lock")
