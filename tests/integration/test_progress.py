"""A grid you can watch: on a terminal, train.py -m shows the grid's bar and each cell's bar named
by the cell, and an error starts its own line; qat.status --watch counts the grid from the store."""

from __future__ import annotations

import re
import sys

from qat.status import main as status_main
from tests.integration.conftest import REPO, VOCAB, train_env
from tests.integration.terminal import run_on_terminal, screen

# Two tiny cells: one whose loss turns NaN at once, one that trains.
CELLS = (
    f"data.vocab_size={VOCAB}",
    "data.batch_size=4",
    "data.seq_len=32",
    "data.eval_tokens=64",
    "tokens=2K",
    "bits=2",
    "optim.grad_clip=0",
    "trainer.log_every=1",
)
LABEL = "nano b2 f0.3 2K s0 optim.lr=0.01"


def test_a_grid_on_a_terminal_names_its_cells_and_errors_start_their_own_line(
    tmp_path, data_root, monkeypatch, capsys
):
    command = [sys.executable, str(REPO / "train.py"), "-m", *CELLS, "optim.lr=1e30,0.01"]
    status, raw = run_on_terminal(command, tmp_path, train_env(tmp_path, data_root), timeout=300)
    lines = screen(raw)
    assert status == 1, "\n".join(lines[-30:])
    errors = [line for line in lines if "error:" in line]
    assert errors, "\n".join(lines[-30:])
    # each error is a line of its own: nothing of a bar before or after it
    assert all(line.startswith("error:") for line in errors), errors
    assert errors[0].startswith("error: training loss is nan at step ")
    assert errors[0].endswith(" tokens); lower optim.lr or check the data")
    assert LABEL in raw  # the cell's bar, named by the cell and its swept key
    assert "tok/s" in raw and "loss=" in raw
    (grid,) = [line for line in lines if line.startswith("grid: ")]  # the grid bar, left at 100%
    assert grid.startswith("grid: 2/2 cells, 1 failed 100%|"), grid
    assert "| 4.1K/4.1K tokens, " in grid and grid.endswith("ETA 0s")

    # The same grid and one cell more, from the store: one line per view off a terminal, then the
    # whole view.
    for name, value in train_env(tmp_path, data_root).items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    watch = [*CELLS, "optim.lr=1e30,0.01,0.02", "--watch", "--every", "0.1", "--iterations", "2"]
    assert status_main(watch) == 1  # a cell failed
    out = capsys.readouterr().out.splitlines()
    counts = "finished: 1  running: 0  queued: 0  failed: 1  new: 1"
    # Tokens done: the finished cell's 2.05K and what the failed one trained before its loss
    # went NaN (logged up to the failure), of the 3 cells' 6.14K.
    done = r"2\.\d\dK/6\.14K tokens \((3[3-9]|4\d)%\)"
    assert re.search(rf" {counts}  {done}, \? tok/s, ETA \?$", out[0]), out
    assert out[2] == counts and re.match(done, out[3]), out
    assert any(line.endswith("nano b2 f0.3 2K s0 optim.lr=0.02") for line in out[4:]), out
