"""python -m qat.node_grid: a grid split into sub-grids over parallel workers (CPU here), stopped
at a deadline and finished by running the same command again."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.integration.conftest import VOCAB, runs, train_env

GRID = [
    "grid=smoke",
    "bits=16,2,4",
    "qat_frac=0.25,0.5",
    "tokens=100K",
    f"data.vocab_size={VOCAB}",
    "data.eval_tokens=16384",
]


def node_grid(workdir, data_root, *extra: str):
    return subprocess.run(
        [sys.executable, "-m", "qat.node_grid", *GRID, "--gpus", "0", *extra],
        cwd=workdir,
        env=train_env(workdir, data_root),
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_deadline_then_rerun_finishes_every_cell_once(tmp_path, data_root):
    stopped = node_grid(tmp_path, data_root, "--workers-per-gpu", "2", "--deadline", "12")
    assert stopped.returncode == 3, stopped.stderr[-3000:]
    assert "left in" in stopped.stdout
    # stopped before the end: the grid is not all FINISHED, and no run claims to be without its
    # final loss
    finished = [r for r in runs(tmp_path) if r.info.status == "FINISHED"]
    assert len(finished) < 5
    assert all("final/val_loss" in r.data.metrics for r in finished)

    done = node_grid(tmp_path, data_root, "--workers-per-gpu", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "3 sub-grids done, 0 failed, 0 left" in done.stdout
    # the grid's bar, read from the run store; off a terminal plain lines, no carriage return
    grid = [line for line in done.stderr.splitlines() if line.startswith("grid: ")]
    assert re.match(r"grid: 5/5 cells, (\S+)/\1 tokens \(100%\), ", grid[-1]), grid
    assert grid[-1].endswith(", ETA 0s") and "\r" not in done.stderr
    # each worker's log: its cells' plain progress lines, named by the cell
    logs = "".join(path.read_text() for path in tmp_path.glob("multirun/node_grid/*/*.log"))
    assert "\r" not in logs
    assert re.search(r"^nano b[24] f0\.(25|5) 100K s0: [\d.]+K/100K tokens \(", logs, re.M), logs
    finished = [r for r in runs(tmp_path) if r.info.status == "FINISHED"]
    # FP once (bits=16 ignores qat_frac) + 2 bit widths × 2 fractions, each exactly once.
    assert len(finished) == 5
    assert len({r.data.tags["run_key"] for r in finished}) == 5

    again = node_grid(tmp_path, data_root, "--workers-per-gpu", "1")
    assert again.returncode == 0
    assert len([r for r in runs(tmp_path) if r.info.status == "FINISHED"]) == 5


def test_packed_sub_grids_are_one_pack_each(tmp_path, data_root):
    """trainer=packed: split by model and seed, each sub-grid is a train.py -m that packs its
    cells (options and overrides in any order)."""
    packed = node_grid(tmp_path, data_root, "trainer=packed", "seed=0,1")
    assert packed.returncode == 0, packed.stderr[-3000:]
    assert "cells in 2 sub-grids; 1 workers" in packed.stdout
    logs = "".join(path.read_text() for path in tmp_path.glob("multirun/node_grid/*/*.log"))
    assert re.search(r"^pack nano s1 \(5 cells\): 100K/100K tokens \(100%\)", logs, re.M), logs
    finished = [r for r in runs(tmp_path) if r.info.status == "FINISHED"]
    assert len(finished) == 10
    assert all(r.data.params["trainer.backend"] == "packed" for r in finished)
    # one pack per seed: its cells forked from one trunk
    packs: dict[str, set[str]] = {}
    for run in finished:
        packs.setdefault(run.data.params["seed"], set()).add(run.data.tags["pack_key"])
    assert sorted(packs) == ["0", "1"]
    assert all(len(keys) == 1 for keys in packs.values())
    assert packs["0"] != packs["1"]
