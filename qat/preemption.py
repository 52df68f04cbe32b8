"""Checkpoint-then-requeue on SLURM's pre-timeout / preemption signal.

submitit's handler for the signal requeues the job and exits at once, wherever the training
loop happens to be. We defer it: while the loop runs, the signal only sets a flag; at the next
step boundary the loop writes a consistent checkpoint and then hands over to submitit's handler,
which requeues the job. The requeued job resumes from that checkpoint.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

_pending: list[tuple[Callable[..., Any], int]] = []
_in_loop = False
_interrupted = False
_installed = False


def install(signum: int = signal.SIGUSR2) -> None:
    """Wrap the handler that submitit installed for ``signum`` (no-op outside submitit)."""
    global _installed
    original = signal.getsignal(signum)
    if _installed or not callable(original):
        return

    def deferred(number: int, frame: Any) -> None:
        if _in_loop:
            _pending.append((original, number))
        else:
            original(number, frame)

    signal.signal(signum, deferred)
    _installed = True


@contextmanager
def training_loop(defer_interrupt: bool = False) -> Iterator[None]:
    """While the loop runs, a preemption signal is deferred to the next step boundary; with
    ``defer_interrupt`` so is the first Ctrl-C/SIGINT (``interrupted()``), so the loop can
    checkpoint before it stops. A second SIGINT stops at once."""
    global _in_loop, _interrupted
    _in_loop = True
    _interrupted = False
    previous = None
    if defer_interrupt and threading.current_thread() is threading.main_thread():

        def note_interrupt(number: int, frame: Any) -> None:
            global _interrupted
            if _interrupted:
                raise KeyboardInterrupt
            _interrupted = True

        previous = signal.signal(signal.SIGINT, note_interrupt)
    try:
        yield
    finally:
        _in_loop = False
        _interrupted = False
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def interrupted() -> bool:
    """A deferred SIGINT is waiting: checkpoint, then raise KeyboardInterrupt."""
    return _interrupted


def requested() -> bool:
    return bool(_pending)


def hand_over() -> None:
    """Run the deferred handler (submitit: checkpoint the callable, requeue, exit)."""
    handler, number = _pending.pop()
    _pending.clear()
    handler(number, None)
