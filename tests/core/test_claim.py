"""Cell claims: liveness from the owner itself where it can be asked, the heartbeat elsewhere."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from qat.store import claim as claims
from qat.store.claim import CellBusy, Claim, Owner

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(60)


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, poll: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout} s")


def record(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "claim.json").read_text())


def write_claim(run_dir: Path, *, heartbeat: float | None = None, **owner: Any) -> None:
    """A claim written by hand, as another launcher would have left it."""
    fields: dict[str, Any] = {
        "owner": "someone else",
        "host": "elsewhere",
        "machine": "another machine",
        "pid": 1,
        "start": None,
        "job": None,
        "restart": 0,
        "token": "theirs",
        "heartbeat": time.time() if heartbeat is None else heartbeat,
    }
    fields.update(owner)
    (run_dir / "claim.json").write_text(json.dumps(fields))


def start_holder(run_dir: Path, ttl_s: float, heartbeat_s: float, then: str) -> subprocess.Popen:
    """Another process that acquires the claim, says so on stdout, then runs ``then``."""
    code = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from qat.store.claim import Claim
        Claim(Path(sys.argv[1]), ttl_s={ttl_s}, heartbeat_s={heartbeat_s}).acquire()
        print("held", flush=True)
        {then}
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(run_dir)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_claim_is_busy_until_the_first_is_released(tmp_path):
    first = Claim(tmp_path)
    first.acquire()
    # Another Claim of the same process is another owner (two workers of one SLURM job, say).
    second = Claim(tmp_path)
    with pytest.raises(CellBusy, match="being trained by"):
        second.acquire()
    first.release()
    second.acquire()  # released: free to take
    second.release()


def test_a_live_process_keeps_its_claim_past_the_ttl_and_loses_it_once_killed(tmp_path):
    # The holder's heartbeat never beats within the test: only its liveness keeps the claim.
    proc = start_holder(tmp_path, ttl_s=0.5, heartbeat_s=3600, then="time.sleep(60)")
    try:
        second = Claim(tmp_path, ttl_s=0.5)
        wait_until(lambda: time.time() - record(tmp_path)["heartbeat"] > 1.5)
        with pytest.raises(CellBusy):
            second.acquire()
        assert record(tmp_path)["pid"] == proc.pid
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    second.acquire()  # the owner is gone: taken at once, whatever the heartbeat says
    assert record(tmp_path)["pid"] == os.getpid()
    second.release()


def test_the_heartbeat_thread_does_not_keep_a_process_alive(tmp_path):
    proc = start_holder(tmp_path, ttl_s=60, heartbeat_s=0.05, then="")
    assert proc.wait(timeout=10) == 0  # ended without release(): the daemon thread let it
    assert Claim(tmp_path).holder() is None  # and its claim died with it


def test_a_foreign_claim_lives_until_its_heartbeat_is_older_than_the_ttl(tmp_path):
    write_claim(tmp_path, heartbeat=time.time() - 5)
    assert Claim(tmp_path, ttl_s=60).holder() == ("someone else", pytest.approx(5, abs=5))
    with pytest.raises(CellBusy):
        Claim(tmp_path, ttl_s=60).acquire()
    write_claim(tmp_path, heartbeat=time.time() - 61)
    assert Claim(tmp_path, ttl_s=60).holder() is None
    taker = Claim(tmp_path, ttl_s=60)
    taker.acquire()
    assert record(tmp_path)["token"] != "theirs"
    taker.release()


def test_the_heartbeat_thread_keeps_a_claim_live_where_only_the_heartbeat_counts(
    tmp_path, monkeypatch
):
    holder = Claim(tmp_path, ttl_s=1.0, heartbeat_s=0.05)
    holder.acquire()
    try:
        acquired = time.time()
        # Readers from now on sit on another machine: they cannot ask the holder's pid.
        monkeypatch.setattr(claims, "this_machine", lambda: "a machine far away")
        reader = Claim(tmp_path, ttl_s=1.0)
        first = record(tmp_path)["heartbeat"]
        wait_until(lambda: record(tmp_path)["heartbeat"] > first)
        wait_until(lambda: time.time() - acquired > 2.0)  # twice the TTL since acquire()
        held = reader.holder()
        assert held is not None and held[1] < 1.0
        with pytest.raises(CellBusy):
            reader.acquire()
    finally:
        holder.release()


def test_release_stops_the_thread_and_nothing_brings_the_claim_back(tmp_path):
    holder = Claim(tmp_path, heartbeat_s=0.02)
    holder.acquire()
    thread = holder._thread
    assert thread is not None and thread.daemon and thread.is_alive()
    first = record(tmp_path)["heartbeat"]
    wait_until(lambda: record(tmp_path)["heartbeat"] > first)
    holder.release()
    assert not thread.is_alive()
    assert not (tmp_path / "claim.json").exists()
    time.sleep(0.2)  # ten heartbeats' time: none of them writes the claim back
    assert not (tmp_path / "claim.json").exists()
    assert list(tmp_path.glob("*.tmp")) == []
    holder.release()  # twice is harmless


def test_a_block_that_is_interrupted_still_releases(tmp_path):
    holder = Claim(tmp_path, heartbeat_s=0.02)
    with pytest.raises(KeyboardInterrupt), holder.held():
        assert (tmp_path / "claim.json").exists()
        raise KeyboardInterrupt
    assert holder._thread is None
    assert not (tmp_path / "claim.json").exists()
    assert [t for t in threading.enumerate() if t.name.startswith("claim heartbeat")] == []


def test_a_failed_heartbeat_is_logged_once_and_the_next_ones_go_on(tmp_path, monkeypatch, capsys):
    real_write = Claim._write
    writes = 0

    def flaky_write(self: Claim) -> None:
        nonlocal writes
        writes += 1
        if writes in (2, 3):  # the first write is acquire()'s, the next two the thread's
            raise OSError("disk hiccup")
        real_write(self)

    monkeypatch.setattr(Claim, "_write", flaky_write)
    holder = Claim(tmp_path, heartbeat_s=0.02)
    with holder.held():
        first = record(tmp_path)["heartbeat"]
        wait_until(lambda: writes >= 5)
        assert record(tmp_path)["heartbeat"] > first
    err = capsys.readouterr().err
    assert err.count("claim heartbeat failed") == 1 and "disk hiccup" in err
    assert "claim heartbeat written again" in err


def test_a_claim_taken_over_is_never_written_over(tmp_path, capsys):
    holder = Claim(tmp_path, heartbeat_s=0.02)
    holder.acquire()
    # Another launcher judged the holder dead (a stalled file system, say) and took the cell.
    write_claim(tmp_path)
    wait_until(lambda: "taken over by someone else" in capsys.readouterr().err)
    time.sleep(0.1)
    assert record(tmp_path)["token"] == "theirs"
    holder.release()
    assert record(tmp_path)["token"] == "theirs"  # not ours to remove


def test_a_local_owner_is_gone_at_once_when_dead_reused_or_a_zombie(tmp_path):
    me = Owner.me()
    here = {"machine": me.machine, "host": me.host}
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    write_claim(tmp_path, pid=dead.pid, **here)
    assert Claim(tmp_path).holder() is None

    # This very process, but started at another time: its pid was reused.
    assert me.start is not None  # Linux: /proc gives start times
    write_claim(tmp_path, pid=os.getpid(), start=me.start + 1, **here)
    assert Claim(tmp_path).holder() is None
    # The same pid with its own start time is live, however old the heartbeat.
    write_claim(tmp_path, pid=os.getpid(), start=me.start, heartbeat=0.0, **here)
    assert Claim(tmp_path).holder() is not None

    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        wait_until(lambda: (claims._stat(zombie.pid) or ("?",))[0] == "Z")
        write_claim(tmp_path, pid=zombie.pid, start=claims._stat(zombie.pid)[1], **here)
        assert Claim(tmp_path).holder() is None
    finally:
        zombie.wait()


def test_a_claim_without_owner_fields_is_left_to_the_ttl(tmp_path):
    # Written before the claim said where its owner runs: nothing to ask, only the heartbeat.
    (tmp_path / "claim.json").write_text(json.dumps({"owner": "old", "heartbeat": time.time()}))
    assert Claim(tmp_path, ttl_s=60).holder() is not None
    (tmp_path / "claim.json").write_text(json.dumps({"owner": "old", "heartbeat": 0.0}))
    assert Claim(tmp_path, ttl_s=60).holder() is None
    (tmp_path / "claim.json").write_text("{not json")
    assert Claim(tmp_path).holder() is None


@pytest.mark.parametrize(
    ("queue", "heartbeat_age", "live"),
    [
        ({"77_3": "RUNNING"}, 10_000, True),  # running: live, however old the heartbeat
        ({"77_3": "SUSPENDED"}, 10_000, True),
        ({}, 0, False),  # no longer queued: gone at once
        ({"77_3": "PENDING"}, 0, True),  # pending after a requeue: the heartbeat decides
        ({"77_3": "PENDING"}, 10_000, False),
        (None, 0, True),  # no squeue: the heartbeat decides
        (None, 10_000, False),
    ],
)
def test_a_slurm_owner_elsewhere_is_asked_of_squeue(
    tmp_path, monkeypatch, queue, heartbeat_age, live
):
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.setattr(claims, "squeue_states", lambda: queue)
    write_claim(tmp_path, job="77_3", heartbeat=time.time() - heartbeat_age)
    assert (Claim(tmp_path, ttl_s=60).holder() is not None) is live


def test_our_own_job_ignores_squeue_and_retakes_its_earlier_attempts_claim(tmp_path, monkeypatch):
    def no_squeue() -> None:
        raise AssertionError("squeue says nothing about our own job")

    monkeypatch.setattr(claims, "squeue_states", no_squeue)
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "77")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    # Written on another node by the attempt before the requeue: gone, however fresh.
    write_claim(tmp_path, job="77_3", restart=0)
    assert Claim(tmp_path, ttl_s=60).holder() is None
    # Another process of this same attempt on another node: only its heartbeat can tell.
    write_claim(tmp_path, job="77_3", restart=1)
    assert Claim(tmp_path, ttl_s=60).holder() is not None
    write_claim(tmp_path, job="77_3", restart=1, heartbeat=0.0)
    assert Claim(tmp_path, ttl_s=60).holder() is None


def test_a_claim_records_who_holds_it(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    with Claim(tmp_path).held():
        written = record(tmp_path)
        owner = Owner.from_json(written)
        assert owner == Owner.me()
        assert owner.job == "42" and owner.pid == os.getpid()
        assert written["owner"].startswith("SLURM job 42")
