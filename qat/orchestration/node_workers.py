"""Workers that run a grid's sub-grids on one machine's GPUs (``python -m qat.node_grid``).

Each worker is a ``train.py -m`` of one sub-grid (the sweep split by the keys of ``split``: one
Python start per sub-grid, not per cell); workers take sub-grids from a queue, biggest first as
the grid file lists them. Every trunk's branch points are registered before any worker starts,
so no trunk prefix is trained twice. At the deadline workers are stopped with SIGINT (the MLflow
run is marked KILLED and resumes from its checkpoint next time). Meanwhile the grid's bar reads
the run store (each cell's metrics.jsonl and claim): cells done / total, tokens, ETA.
"""

from __future__ import annotations

import itertools
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from qat.config import RunConfig

REPO = Path(__file__).resolve().parents[2]
WATCH_EVERY_S = 2.0  # between two reads of the run store for the grid's bar


@dataclass
class Outcome:
    done: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def sweep_params(overrides: list[str]) -> dict[str, list[str]]:
    """The sweep's keys and values: the grid file's hydra.sweeper.params, then the command line's
    values of any key (a comma list or one value, which win), in the order Hydra sweeps them."""
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from qat.orchestration.grid import CONF_DIR

    parser = OverridesParser.create()
    parsed = parser.parse_overrides(overrides)
    # parse_overrides sets every input_line (Optional only for Overrides built by hand).
    fixed = [cast(str, o.input_line) for o in parsed if not o.is_sweep_override()]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        hydra_cfg = compose("config", overrides=fixed, return_hydra_config=True)
    params = {k: str(v) for k, v in (hydra_cfg.hydra.sweeper.get("params") or {}).items()}
    for override in parsed:
        key = override.get_key_element()
        # One value on the command line narrows the grid file's sweep of that key, as Hydra
        # does when it expands the cells: `grid=repro model=mini-s` is mini-s's cells only.
        if override.is_sweep_override() or key in params:
            params[key] = cast(str, override.input_line).split("=", 1)[1]
    return {key: [v.strip() for v in value.split(",")] for key, value in params.items()}


def sub_grids(params: dict[str, list[str]], split: list[str]) -> list[list[str]]:
    """One override list per combination of the swept ``split`` keys' values."""
    keys = [key for key in params if key in split]
    return [
        [f"{key}={value}" for key, value in zip(keys, values, strict=True)]
        for values in itertools.product(*(params[key] for key in keys))
    ]


def register_all(base: list[str]) -> list[RunConfig]:
    """Register every trunk's branch points (the sub-grids' cells are the whole sweep's, so it is
    expanded once); the sweep's cells."""
    from qat.orchestration.grid import expand_grid
    from qat.orchestration.trunk_plan import register_branch_points

    cells = expand_grid(base)
    # A pack forks its cells from its own in-memory trunk: nothing to register for those.
    register_branch_points([c for c in cells if c.trainer.backend != "packed"])
    return cells


def _worker(
    gpu: str | None,
    jobs: queue.Queue,
    base: list[str],
    log_dir: Path,
    deadline: float,
    outcome: Outcome,
) -> None:
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    while time.monotonic() < deadline:
        try:
            index, grid = jobs.get_nowait()
        except queue.Empty:
            return
        name = " ".join(grid)
        sweep_dir = log_dir / f"{index:04d}"
        command = [
            sys.executable,
            str(REPO / "train.py"),
            "-m",
            *base,
            *grid,
            f"hydra.sweep.dir={sweep_dir}",
        ]
        with open(log_dir / f"{index:04d}.log", "w") as log:
            proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
            while proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.5)
            if proc.poll() is None:  # out of time: KILLED in MLflow, resumable
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                with outcome.lock:
                    outcome.stopped.append(name)
                return
        with outcome.lock:
            (outcome.done if proc.returncode == 0 else outcome.failed).append(name)


def _watch(cells: list[RunConfig], threads: list[threading.Thread]) -> None:
    """The grid's bar, from the run store (the workers' cells log there), until the workers end."""
    from qat.orchestration.grid_watch import GridWatch
    from qat.progress import GridBar

    watch = GridWatch(cells)
    bar = GridBar()
    try:
        while alive := [thread for thread in threads if thread.is_alive()]:
            bar.show(watch.counts())
            alive[0].join(timeout=WATCH_EVERY_S)
        bar.show(watch.counts())
    finally:
        bar.close()  # the summary and errors below go under it


def run_grid(
    base: list[str],
    gpus: int,
    workers_per_gpu: int,
    split: list[str],
    deadline_s: float | None,
    log_dir: Path | None,
) -> int:
    """Run the sweep ``base`` to the end or the deadline: 0 done, 1 a sub-grid failed, 3 time
    ran out with work left."""
    grids = sub_grids(sweep_params(base), split)
    workers = max(gpus, 1) * workers_per_gpu
    started = time.monotonic()
    cells = register_all(base)
    print(
        f"{len(cells)} cells in {len(grids)} sub-grids; {workers} workers on {gpus or 'no'} GPU(s)",
        flush=True,
    )

    log_dir = log_dir or Path("multirun") / "node_grid" / time.strftime("%Y-%m-%d_%H-%M-%S")
    log_dir.mkdir(parents=True, exist_ok=True)
    jobs: queue.Queue = queue.Queue()
    for item in enumerate(grids):
        jobs.put(item)
    deadline = started + deadline_s if deadline_s else float("inf")
    outcome = Outcome()
    # Device ids as this process sees them (a CUDA_VISIBLE_DEVICES of ours is kept).
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = visible.split(",") if visible else [str(i) for i in range(gpus)]
    threads = [
        threading.Thread(
            target=_worker,
            args=(ids[i % gpus] if gpus else None, jobs, base, log_dir, deadline, outcome),
        )
        for i in range(workers)
    ]
    for thread in threads:
        thread.start()
    _watch(cells, threads)
    left = jobs.qsize() + len(outcome.stopped)
    print(
        f"{len(outcome.done)} sub-grids done, {len(outcome.failed)} failed, {left} left "
        f"in {time.monotonic() - started:.0f} s; logs in {log_dir}"
    )
    for name in outcome.failed:
        print(f"error: sub-grid failed: {name} (see its log in {log_dir})", file=sys.stderr)
    if outcome.failed:
        return 1
    return 3 if left else 0
