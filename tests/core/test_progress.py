"""The progress display: named cells, token counts, the grid's counter; off a terminal (a CI log,
a SLURM .out file) plain lines and no carriage returns. A grid on a real terminal:
tests/integration/test_progress.py."""

from __future__ import annotations

import io
import sys

import pytest

from qat import progress
from qat.config import RunConfig
from qat.progress import CellProgress, cell_label
from tests.core.test_config import tree


@pytest.fixture
def every_update(monkeypatch):
    monkeypatch.setenv("QAT_PROGRESS_EVERY_S", "0")


def test_a_cell_is_named_by_its_keys_and_the_other_swept_ones():
    config = RunConfig.from_dict(tree(optim={"lr": 0.02}, seed=1))
    assert cell_label(config) == "nano b4 f0.3 2M s1"
    assert (
        cell_label(config, ["bits", "qat_frac", "optim.lr"]) == "nano b4 f0.3 2M s1 optim.lr=0.02"
    )
    assert cell_label(RunConfig.from_dict(tree(bits=16, tokens="500K"))) == "nano fp 500K s0"
    mxfp4 = RunConfig.from_dict(tree(quant={"format": "mxfp4"}))
    assert cell_label(mxfp4, ["quant.format"]) == "nano mxfp4 f0.3 2M s0"


def test_a_cell_bar_off_a_terminal_prints_plain_lines(capsys, every_update):
    losses = iter([3.5, 3.25, 3.0])
    with CellProgress("nano b4 f0.3 2M s0", total=3000, start=1500) as bar:
        bar.phase = "fp"
        for _ in range(2):
            bar.advance(500, lambda: next(losses))
        bar.phase = "qat"
        bar.advance(500, lambda: next(losses))
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.splitlines()
    assert lines[0].startswith("nano b4 f0.3 2M s0: 2K/3K tokens (67%), loss 3.500 (fp), ")
    assert "tok/s, ETA " in lines[0]
    assert lines[2].startswith("nano b4 f0.3 2M s0: 3K/3K tokens (100%), loss 3.000 (qat)")
    assert lines[3].startswith("nano b4 f0.3 2M s0: 3K/3K tokens (100%)")
    assert " done in " in lines[3]
    assert len(lines) == 4


def test_the_loss_is_read_only_when_a_line_is_due(capsys, monkeypatch):
    monkeypatch.setenv("QAT_PROGRESS_EVERY_S", "3600")
    with CellProgress("c", total=100) as bar:
        for _ in range(10):
            bar.advance(10, lambda: pytest.fail("no line was due"))
    (line,) = capsys.readouterr().err.splitlines()  # the closing line only
    assert line.startswith("c: 100/100 tokens (100%), ")


def test_a_grid_counts_cells_tokens_and_failures(capsys, every_update, request):
    grid = progress.start_grid({"a": 1000, "b": 3000})
    request.addfinalizer(progress.end_grid)
    grid.start_cell("a")
    with CellProgress("a", total=1000) as bar:
        bar.advance(600, lambda: 2.0)
    counts = grid.counts()
    assert (counts.ended, counts.running, counts.tokens_done) == (0, 1, 600)
    grid.end_cell("a")
    grid.start_cell("b")
    grid.end_cell("b", failed=True)
    grid.end_cell("b")  # a second job of the same cell counts once
    progress.end_grid()
    counts = grid.counts()
    assert (counts.finished, counts.failed, counts.tokens_done, counts.eta_s()) == (1, 1, 4000, 0)
    err = capsys.readouterr().err
    assert "\r" not in err
    grid_lines = [line for line in err.splitlines() if line.startswith("grid: ")]
    assert grid_lines[0] == "grid: 0/2 cells, 0/4K tokens (0%), ? tok/s, ETA ?"
    assert grid_lines[-1].startswith("grid: 2/2 cells, 1 failed, 4K/4K tokens (100%), ")
    assert any(line.startswith("a: 600/1K tokens (60%)") for line in err.splitlines())


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(("seconds_per_step", "reads"), [(3.0, 5), (0.1, 1)])
def test_on_a_terminal_the_loss_is_at_most_two_seconds_old(monkeypatch, seconds_per_step, reads):
    """A slow run shows the loss of every step, a fast one reads it (a device sync) every 2 s."""
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    now = [100.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    read = []
    with CellProgress("nano b4 f0.3 2M s0", total=500) as bar:
        for step in range(5):
            now[0] += seconds_per_step
            bar.advance(100, lambda step=step: read.append(step) or 3.0 - step)
    assert len(read) == reads
    assert sys.stderr is terminal  # the routing above the bar is undone
    shown = terminal.getvalue()
    assert "nano b4 f0.3 2M s0: 100%" in shown and "500/500" in shown
    assert f"loss={3.0 - read[-1]:.3f}" in shown
