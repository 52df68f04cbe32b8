"""Checkpoint-then-stop on SLURM's pre-timeout / preemption signal and on Ctrl-C.

submitit's handler for the signal requeues the job and exits at once, wherever the training
loop happens to be. We defer it: while the loop runs, the signal only sets a flag; at the next
step boundary the loop writes a consistent checkpoint and then hands over to submitit's handler,
which requeues the job. The requeued job resumes from that checkpoint.

Ctrl-C (SIGINT) is deferred the same way: the loop checkpoints at the next step boundary and
raises :class:`qat.errors.Interrupted`, so a rerun resumes exactly there. A second Ctrl-C before
that boundary stops at once.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from qat.errors import Interrupted

_pending: list[tuple[Callable[..., Any], int]] = []
_in_loop = False
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
def training_loop() -> Iterator[None]:
    global _in_loop
    _in_loop = True
    previous = _defer_interrupt()
    try:
        yield
    finally:
        _in_loop = False
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def requested() -> bool:
    return bool(_pending)


def hand_over(tokens: int | None = None) -> None:
    """Run the deferred handler (submitit: checkpoint the callable, requeue, exit; Ctrl-C: raise
    Interrupted at ``tokens``, the checkpoint just written)."""
    handler, number = _pending.pop()
    _pending.clear()
    if handler is _interrupt:
        raise Interrupted(tokens)
    handler(number, None)


def _defer_interrupt() -> Any:
    """Defer SIGINT to the next step boundary; the handler it replaced (None: left alone, as
    off the main thread, where signals cannot be set, or under someone else's handler)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None
    previous = signal.getsignal(signal.SIGINT)
    if previous is not signal.default_int_handler:
        return None
    signal.signal(signal.SIGINT, _on_interrupt)
    return previous


def _on_interrupt(number: int, frame: Any) -> None:
    if any(handler is _interrupt for handler, _ in _pending):
        raise KeyboardInterrupt  # Ctrl-C twice: do not wait for the step to end
    _pending.append((_interrupt, number))


def _interrupt(number: int, frame: Any) -> None:
    """Marks a deferred Ctrl-C in ``_pending`` (hand_over raises Interrupted instead)."""
    raise Interrupted()
