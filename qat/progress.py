"""What a person watching training sees: a bar per cell (named by the cell, counting tokens, with
its loss and tokens/s) and a bar per grid (cells done / total, tokens done / total, ETA).

On a terminal the bars are tqdm bars, and while one is shown everything else written to the
terminal (print, logging, warnings) is routed above the bars as whole lines: an error never lands
glued onto a bar. Anywhere else (a CI log, a SLURM .out file, a pipe) no carriage return is
written: a bar prints a plain line every ``QAT_PROGRESS_EVERY_S`` seconds (default 30) and one
when it ends, a grid bar also one whenever a cell ends.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import IO, Any

from qat.config import RunConfig, flatten
from qat.units import format_count

LOSS_EVERY_S = 2.0  # a bar's loss is never older than this (a slow run refreshes every step)
PLAIN_EVERY_ENV = "QAT_PROGRESS_EVERY_S"
PLAIN_EVERY_DEFAULT_S = 30.0


def plain_every_s() -> float:
    """Seconds between two plain progress lines (off a terminal)."""
    value = os.environ.get(PLAIN_EVERY_ENV)
    try:
        return max(float(value), 0.0) if value else PLAIN_EVERY_DEFAULT_S
    except ValueError:
        return PLAIN_EVERY_DEFAULT_S


# The keys the label below always shows: any other swept key is added as key=value.
LABELLED_KEYS = frozenset(
    ("model", "model.name", "bits", "qat_frac", "tokens", "seed", "fusion")
).union(("schedule.qat_lr_ratio", "optim.qat_reset_moments", "quant.format"))


def cell_label(config: RunConfig, swept: Iterable[str] = ()) -> str:
    """A cell as a person names it: ``nano b4 f0.3 2M s0`` (``fp`` for a full-precision cell,
    ``mxfp4`` for a float format),
    then the value of each other key of ``swept`` (the grid's swept keys): ``optim.lr=0.01``."""
    parts = [config.model.name, *config.quantization_label]
    parts += [format_count(config.tokens), f"s{config.seed}"]
    extra = [key for key in swept if key not in LABELLED_KEYS]
    if extra:
        flat = flatten(config.to_dict())
        for key in extra:
            # A swept config group (data=bundled,bundled-large) shows its name or source.
            value = next(
                (flat[k] for k in (key, f"{key}.name", f"{key}.source") if k in flat), None
            )
            if value is not None:
                parts.append(f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}")
    return " ".join(parts)


def format_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def format_tokens(value: float) -> str:
    """A count to three figures: ``7.94K``, ``2M``, ``128``."""
    for suffix, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.0f}"


def _speed(tokens_per_s: float | None) -> str:
    return "? tok/s" if tokens_per_s is None else f"{format_tokens(tokens_per_s)} tok/s"


# --- the terminal ------------------------------------------------------------------------------


class _AboveBars:
    """A stream whose complete lines are written above the bars (cleared, written, redrawn);
    a partial line waits for its newline, so nothing is glued onto a bar."""

    def __init__(self, stream: IO[str], bars: IO[str]) -> None:
        self._stream, self._bars, self._pending = stream, bars, ""

    def write(self, text: str) -> int:
        from tqdm import tqdm

        self._pending += text
        if "\n" in self._pending:
            lines, self._pending = self._pending.rsplit("\n", 1)
            with tqdm.external_write_mode(file=self._bars):
                self._stream.write(lines + "\n")
                self._stream.flush()
        return len(text)

    def flush(self) -> None:
        self._stream.flush()

    def release(self) -> None:
        if self._pending:
            self._stream.write(self._pending)
            self._pending = ""
        self._stream.flush()

    def __getattr__(self, name: str) -> Any:  # isatty, fileno, encoding, ...
        return getattr(self._stream, name)


class _Terminal:
    """The stream bars are drawn on, and, while a bar is on a terminal, the routing of
    ``sys.stdout``, ``sys.stderr`` and console logging handlers above the bars."""

    def __init__(self) -> None:
        self._users = 0
        self._saved: tuple[IO[str], IO[str]] | None = None
        self._handlers: list[tuple[logging.StreamHandler, IO[str]]] = []

    @property
    def stream(self) -> IO[str]:
        return self._saved[1] if self._saved is not None else sys.stderr

    def interactive(self) -> bool:
        isatty = getattr(self.stream, "isatty", None)
        return bool(isatty and isatty())

    def acquire(self) -> None:
        self._users += 1
        if self._users > 1:
            return
        out, err = sys.stdout, sys.stderr
        self._saved = (out, err)
        proxies: dict[int, _AboveBars] = {id(err): _AboveBars(err, err)}
        if out.isatty():  # a stdout piped elsewhere is left alone
            proxies[id(out)] = _AboveBars(out, err)
        sys.stderr = proxies[id(err)]
        sys.stdout = proxies.get(id(out), out)
        loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
        for logger in loggers:
            for handler in getattr(logger, "handlers", []):
                if isinstance(handler, logging.StreamHandler) and id(handler.stream) in proxies:
                    self._handlers.append((handler, handler.stream))
                    handler.setStream(proxies[id(handler.stream)])

    def release(self) -> None:
        self._users -= 1
        if self._users > 0 or self._saved is None:
            return
        for handler, stream in self._handlers:
            if isinstance(handler.stream, _AboveBars):
                handler.setStream(stream)
        self._handlers.clear()
        for proxy in (sys.stdout, sys.stderr):
            if isinstance(proxy, _AboveBars):
                proxy.release()
        sys.stdout, sys.stderr = self._saved
        self._saved = None


_TERMINAL = _Terminal()


# --- a cell's bar ------------------------------------------------------------------------------


class CellProgress:
    """One cell's (or trunk's, or pack's) bar: tokens done of its budget, loss, tokens/s."""

    def __init__(self, label: str, total: int, start: int = 0, enabled: bool = True) -> None:
        self.label, self.total, self.tokens = label, total, start
        self.phase: str | None = None
        self._started = time.monotonic()
        self._trained = 0
        self._loss: float | None = None
        self._last_loss = -math.inf
        self._next_line = self._started + plain_every_s()
        self._bar: Any = None
        self._plain = False
        self.closed = not enabled
        if not enabled:
            return
        if _TERMINAL.interactive():
            from tqdm import tqdm

            _TERMINAL.acquire()
            self._bar = tqdm(
                total=total,
                initial=start,
                desc=label,
                unit="tok",
                unit_scale=True,
                dynamic_ncols=True,
                mininterval=0.5,
                file=_TERMINAL.stream,
                # Under a grid bar a finished cell's bar goes: the grid counts it.
                leave=_GRID is None,
            )
        else:
            self._plain = True

    def advance(self, tokens: int, loss: Callable[[], float], work: int | None = None) -> None:
        """``tokens`` more trained; ``loss()`` (the recent training loss) is called only when
        shown; ``work``: the budget tokens this was worth to the grid (a pack's members)."""
        self.tokens += tokens
        self._trained += tokens
        if _GRID is not None:
            _GRID.trained(tokens if work is None else work)
        if self.closed:
            return
        now = time.monotonic()
        if self._bar is not None:
            self._bar.update(tokens)
            if now - self._last_loss >= LOSS_EVERY_S:
                self._last_loss = now
                self._loss = loss()
                self._bar.set_postfix_str(self._postfix(), refresh=False)
        elif self._plain and now >= self._next_line:
            self._next_line = now + plain_every_s()
            self._loss = loss()
            self._print(f"{self._line()}, ETA {format_duration(self._eta_s())}")

    def cell_ended(self, key: str, failed: bool = False) -> None:
        """A cell this bar trains (a pack's member) ended."""
        if _GRID is not None:
            _GRID.end_cell(key, failed)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._bar is not None:
            self._bar.close()
            _TERMINAL.release()
        elif self._plain and self._trained:
            elapsed = format_duration(time.monotonic() - self._started)
            ending = "done" if self.tokens >= self.total else "stopped"
            self._print(f"{self._line()}, {ending} in {elapsed}")

    def __enter__(self) -> CellProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _postfix(self) -> str:
        loss = f"loss={self._loss:.3f}" if self._loss is not None else ""
        return ", ".join(part for part in (loss, self.phase or "") if part)

    def _line(self) -> str:
        percent = 100 * self.tokens / max(self.total, 1)
        line = (
            f"{self.label}: {format_tokens(self.tokens)}/{format_tokens(self.total)} tokens "
            f"({percent:.0f}%)"
        )
        if self._loss is not None:
            line += f", loss {self._loss:.3f}"
        if self.phase:
            line += f" ({self.phase})"
        return f"{line}, {_speed(self._rate())}"

    def _rate(self) -> float | None:
        elapsed = time.monotonic() - self._started
        return self._trained / elapsed if self._trained and elapsed > 0 else None

    def _eta_s(self) -> float | None:
        rate = self._rate()
        return (self.total - self.tokens) / rate if rate else None

    def _print(self, line: str) -> None:
        stream = _TERMINAL.stream
        stream.write(line + "\n")
        stream.flush()


# --- a grid's bar ------------------------------------------------------------------------------


@dataclass
class GridCounts:
    """Where a grid stands: cells by state, budget tokens, and the speed they are trained at."""

    cells: int
    tokens_total: int
    finished: int = 0
    failed: int = 0
    running: int = 0
    queued: int = 0
    tokens_done: int = 0
    tokens_per_s: float | None = None

    @property
    def ended(self) -> int:
        return self.finished + self.failed

    def eta_s(self) -> float | None:
        if self.ended >= self.cells:
            return 0.0
        if not self.tokens_per_s:
            return None
        return max(self.tokens_total - self.tokens_done, 0) / self.tokens_per_s

    def cells_text(self) -> str:
        states = [f"{self.ended}/{self.cells} cells"]
        states += [
            f"{count} {name}"
            for name, count in (
                ("failed", self.failed),
                ("running", self.running),
                ("queued", self.queued),
            )
            if count
        ]
        return ", ".join(states)

    def tokens_text(self, percent: bool = True) -> str:
        done = f"{format_tokens(self.tokens_done)}/{format_tokens(self.tokens_total)} tokens"
        if percent:
            done += f" ({100 * self.tokens_done / max(self.tokens_total, 1):.0f}%)"
        return f"{done}, {_speed(self.tokens_per_s)}, ETA {format_duration(self.eta_s())}"

    def summary(self) -> str:
        return f"grid: {self.cells_text()}, {self.tokens_text()}"


class GridBar:
    """Shows :class:`GridCounts`: a tqdm bar on a terminal, else a plain line whenever a cell
    ends and every ``QAT_PROGRESS_EVERY_S`` seconds."""

    def __init__(self, enabled: bool = True) -> None:
        self._bar: Any = None
        self._plain = False
        self._shown: tuple[int, int] | None = None
        self._next_line = time.monotonic() + plain_every_s()
        self._last: GridCounts | None = None
        self.closed = not enabled
        if not enabled:
            return
        if _TERMINAL.interactive():
            from tqdm import tqdm

            _TERMINAL.acquire()
            self._bar = tqdm(
                total=1,
                desc="grid",
                file=_TERMINAL.stream,
                dynamic_ncols=True,
                # The tokens text rides in {unit}: {postfix} would be shown after ", ".
                bar_format="{desc} {percentage:3.0f}%|{bar}| {unit}",
            )
        else:
            self._plain = True

    def show(self, counts: GridCounts) -> None:
        self._last = counts
        if self.closed:
            return
        if self._bar is not None:
            self._bar.total = max(counts.tokens_total, 1)
            self._bar.n = min(counts.tokens_done, counts.tokens_total)
            self._bar.set_description_str(f"grid: {counts.cells_text()}", refresh=False)
            self._bar.unit = counts.tokens_text(percent=False)  # the bar shows it
            self._bar.refresh()
            return
        now = time.monotonic()
        if (counts.finished, counts.failed) != self._shown or now >= self._next_line:
            self._shown = (counts.finished, counts.failed)
            self._next_line = now + plain_every_s()
            stream = _TERMINAL.stream
            stream.write(counts.summary() + "\n")
            stream.flush()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._bar is not None:
            self._bar.close()
            _TERMINAL.release()
        elif self._last is not None and (self._last.finished, self._last.failed) != self._shown:
            _TERMINAL.stream.write(self._last.summary() + "\n")
            _TERMINAL.stream.flush()


class GridRun:
    """A grid trained in this process (``train.py -m``, a pack): the cell bars report the tokens
    they train, the launcher which cell starts and ends. Tokens done are the budgets of the cells
    that ended plus what is in flight; the speed is tokens trained per second of the run."""

    def __init__(
        self, budgets: dict[str, int], swept: Iterable[str] = (), enabled: bool = True
    ) -> None:
        self.budgets = budgets
        self.swept = tuple(swept)
        self.ended: dict[str, bool] = {}  # run key → failed
        self.running: str | None = None
        self._in_flight = 0
        self._trained = 0
        self._started = time.monotonic()
        self._last_draw = -math.inf
        self._bar = GridBar(enabled)
        self._draw()

    def trained(self, tokens: int) -> None:
        self._in_flight += tokens
        self._trained += tokens
        now = time.monotonic()
        if now - self._last_draw >= 0.5:
            self._draw()

    def start_cell(self, key: str) -> None:
        self.running = key if key not in self.ended else None
        self._draw()

    def end_cell(self, key: str, failed: bool = False) -> None:
        if self.running == key:
            self.running = None
        if key in self.ended or key not in self.budgets:
            return
        self.ended[key] = failed
        self._in_flight = max(0, self._in_flight - self.budgets[key])
        self._draw()

    def counts(self) -> GridCounts:
        failed = sum(self.ended.values())
        total = sum(self.budgets.values())
        done = sum(self.budgets[key] for key in self.ended) + self._in_flight
        elapsed = time.monotonic() - self._started
        return GridCounts(
            cells=len(self.budgets),
            tokens_total=total,
            finished=len(self.ended) - failed,
            failed=failed,
            running=int(self.running is not None),
            tokens_done=min(done, total),
            tokens_per_s=self._trained / elapsed if self._trained and elapsed > 0 else None,
        )

    def _draw(self) -> None:
        self._last_draw = time.monotonic()
        self._bar.show(self.counts())

    def close(self) -> None:
        self._bar.close()


_GRID: GridRun | None = None


def start_grid(budgets: dict[str, int], swept: Iterable[str] = (), enabled: bool = True) -> GridRun:
    """The grid bar of this process's grid (cells by run key → budget tokens; the keys its
    sweep varies, which the cells' bars name)."""
    global _GRID
    end_grid()
    _GRID = GridRun(budgets, swept, enabled)
    return _GRID


def active_grid() -> GridRun | None:
    return _GRID


def swept_keys() -> tuple[str, ...]:
    """The keys this process's grid sweeps (none outside a grid)."""
    return _GRID.swept if _GRID is not None else ()


def end_grid() -> None:
    """Close the grid bar (before a summary is printed; at exit, if a job stopped the run)."""
    global _GRID
    if _GRID is not None:
        _GRID.close()
        _GRID = None


atexit.register(end_grid)
