"""Packed cells against today's node_grid, on one GPU: cell-tokens/s, peak memory, profile.

``step``: the packed training step alone for K members of one shape (all in QAT, formats
mixed, as mid-grid), at each K: cell-tokens/s (K × tokens per step / step time, the median of
windows of back-to-back steps), peak GPU memory, and the top CUDA kernels of one profiled step
at the largest K.

``grid``: one set of cells trained (a) by ``python -m qat.node_grid`` as today (trainer=torch,
8 workers, FP trunks shared through the trunk store) and (b) packed (trainer=packed, one
worker), each into its own MLflow store and run folders, each side stopped by ``--deadline``
where it would not end in time. cell-tokens/s = the budget tokens the cells reached / wall time
of the command: a FINISHED cell counts its whole budget (its trunk prefix included, on both
sides), a stopped one the tokens its metrics.jsonl last logged, as node_grid's own grid line
counts them; so a side stopped by the deadline is measured too, not only its finished cells
(also reported). The cells are sub-grids as the repro grid has them: per model and budget
(``--tokens``, default 16M: 20 tokens per parameter of mini-s) and seed, FP and bits 1/2/4/6 at
8 QAT fractions (33 cells).

    python bench/packed_throughput.py step --out bench/results/packed_step.json
    python bench/packed_throughput.py step --models mini-s --members 32 \
        --formats int fp4_e2m1 mxfp4 nvfp4 --extra trainer.compile=true --out ...
    python bench/packed_throughput.py grid --out bench/results/packed_grid.json
    python bench/packed_throughput.py grid --tokens 16M 64M --deadline 250 --out ...
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from record import write_record

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SHAPE_OVERRIDES = ["data=bundled-large", "data.seq_len=256", "data.batch_size=64"]
GRID_CELLS = {
    "bits": "16,1,2,4,6",
    "qat_frac": "0.05,0.1,0.2,0.35,0.5,0.65,0.8,0.9",
    "fusion": "false",
}
STEP_MODELS = ["mini-s", "mini-l"]
GRID_MODELS = ["mini-s"]


def _member_configs(model: str, members: int, extra: list[str], fmt: str | None = None) -> list:
    """``members`` cells of one shape: QAT fractions spread over (0, 1), integer bits 2 and 4,
    or all of format ``fmt`` at its element's bits (4 for ``int``)."""
    from qat.orchestration.grid import expand_grid
    from qat.quant.formats import element_bits

    fracs = ",".join(f"{0.05 + 0.9 * i / members:.4f}" for i in range(members))
    overrides = [f"model={model}", *SHAPE_OVERRIDES, "trainer=packed", "tokens=200M", *extra]
    bits = "2,4" if fmt is None else "4" if fmt == "int" else str(element_bits(fmt))
    if fmt is not None:
        overrides.append(f"quant.format={fmt}")
    cells = expand_grid(overrides, sweeper_params={"qat_frac": fracs, "bits": bits})
    return list({c.run_key: c for c in cells}.values())[:members]


class _Silent:
    def forked(self, *args: object) -> None: ...
    def log(self, *args: object) -> None: ...
    def finished(self, *args: object) -> None: ...
    def failed(self, key: str, error: Exception) -> None:
        raise error


def steady_qat_trainer(configs: list, data: object):
    """A packed trainer whose members have all forked from their trunk and switched to QAT:
    the mid-grid steady state."""
    from qat.engine.packed import PackedTrainer, plan_members
    from qat.engine.packed.trainer import CELL, Row

    with tempfile.TemporaryDirectory() as tmp:
        trainer = PackedTrainer(
            plan_members(configs), data, Path(tmp), torch.device("cuda"), _Silent(), resume=False
        )
    trainer._select([(0, Row(CELL, 0, c.run_key)) for c in configs])
    for index in range(len(trainer.rows)):
        trainer._start_qat(index)
    trainer._keep(list(range(len(trainer.rows))))
    trainer.step = 1
    return trainer


def median_step_seconds(trainer, steps: int, warmup: int = 5, windows: int = 5) -> float:
    """The median over ``windows`` windows of ``steps`` back-to-back steps, one sync each,
    after ``warmup`` steps (compilation included); peak memory counted from the warm-up."""
    torch.cuda.reset_peak_memory_stats()
    for _ in range(warmup):
        trainer._train_step()
    torch.cuda.synchronize()
    times = []
    for _ in range(windows):
        start = time.perf_counter()
        for _ in range(steps):
            trainer._train_step()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) / steps)
    return statistics.median(times)


def step_throughput(
    model: str, members: int, steps: int, extra: list[str], fmt: str | None = None
) -> dict:
    from qat.cell import load_data

    configs = _member_configs(model, members, extra, fmt)
    trainer = steady_qat_trainer(configs, load_data(configs[0]))
    step_s = median_step_seconds(trainer, steps)
    return {
        "model": model,
        "format": fmt or "int2,int4",
        "members": len(trainer.rows),
        "step_ms": round(1000 * step_s, 2),
        "cell_tokens_per_s": round(trainer.tokens_per_step * len(trainer.rows) / step_s),
        "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
        "trainer": trainer,
    }


def profile_step(trainer, count: int = 15) -> list[dict]:
    """The operators (aten ops and autograd functions) of one step by the GPU time of the
    kernels they launch themselves, the largest first."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        trainer._train_step()
        torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.self_device_time_total > 0]
    kernels = sum(e.self_device_time_total for e in events if e.device_type.name == "CUDA")
    ops = [e for e in events if e.device_type.name == "CPU"]
    rows = sorted(ops, key=lambda e: -e.self_device_time_total)[:count]
    return [
        {
            "op": e.key[:60],
            "calls": e.count,
            "ms": round(e.self_device_time_total / 1000, 3),
            "share": round(e.self_device_time_total / kernels, 3),
        }
        for e in rows
    ]


def run_step(args: argparse.Namespace) -> dict:
    results = []
    last = None
    for model in args.models or STEP_MODELS:
        for fmt in args.formats or [None]:
            for members in args.members:
                torch.cuda.empty_cache()
                try:
                    result = step_throughput(model, members, args.steps, args.extra, fmt)
                except torch.OutOfMemoryError:
                    print(f"{model} {fmt or 'int'} K={members}: out of memory", flush=True)
                    break
                last = result.pop("trainer")
                print(result, flush=True)
                results.append(result)
    profile = profile_step(last) if last is not None else []
    for row in profile:
        print(row)
    return {"step": results, "profile": profile}


def grid_overrides(models: list[str], tokens: list[str], seeds: list[int]) -> list[str]:
    """The bench grid's Hydra overrides: every model × budget × seed × the repro sub-grid."""
    sweep = [
        f"model={','.join(models)}",
        f"tokens={','.join(tokens)}",
        f"seed={','.join(map(str, seeds))}",
    ]
    return [*SHAPE_OVERRIDES, *sweep, *(f"{key}={value}" for key, value in GRID_CELLS.items())]


def cell_tokens_reached(overrides: list[str], run_dir: Path) -> int:
    """Budget tokens the grid's cells reached, read from their run folders as node_grid's grid
    line reads them: a finished cell its budget, any other its last logged token count."""
    from qat.orchestration.grid import expand_grid
    from qat.orchestration.grid_watch import GridWatch

    counts = GridWatch(expand_grid([*overrides, f"run_dir={run_dir}"])).counts()
    return counts.tokens_done


def _node_grid(workdir: Path, overrides: list[str], options: list[str], deadline: float) -> dict:
    env = dict(
        os.environ,
        QAT_RUN_DIR=str(workdir / "runs"),
        MLFLOW_TRACKING_URI=f"sqlite:///{workdir}/mlflow.db",
    )
    command = [
        sys.executable,
        "-m",
        "qat.node_grid",
        *overrides,
        *options,
        "--gpus",
        "1",
        "--deadline",
        str(deadline),
        "--log-dir",
        str(workdir / "logs"),
    ]
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    experiment = client.get_experiment_by_name("qat")
    finished = [
        r
        for r in (client.search_runs([experiment.experiment_id]) if experiment else [])
        if r.info.status == "FINISHED"
    ]
    tokens = sum(int(r.data.params["tokens_total"]) for r in finished)
    reached = cell_tokens_reached(overrides, workdir / "runs")
    print(proc.stdout[-1500:], proc.stderr[-1500:], flush=True)
    return {
        "command": " ".join(command[1:]),
        "returncode": proc.returncode,  # 3: stopped by the deadline
        "wall_s": round(wall, 1),
        "cells_finished": len(finished),
        "finished_cell_tokens": tokens,
        "finished_cell_tokens_per_s": round(tokens / wall),
        "cell_tokens": reached,
        "cell_tokens_per_s": round(reached / wall),
    }


def run_grid(args: argparse.Namespace) -> dict:
    root = Path(tempfile.mkdtemp(prefix="packed-bench-"))
    # compiled: the packed step's element-wise parts fused (eager is about half the speed)
    cells = [*grid_overrides(args.models or GRID_MODELS, args.tokens, args.seeds), *args.extra]
    packed = _node_grid(
        root / "packed", [*cells, "trainer=packed", "trainer.compile=true"], [], args.deadline
    )
    print("packed", packed, flush=True)
    today = _node_grid(root / "torch", cells, ["--workers-per-gpu", "8"], args.deadline)
    print("node_grid", today, flush=True)
    return {
        "packed": packed,
        "node_grid": today,
        "speedup": round(packed["cell_tokens_per_s"] / max(today["cell_tokens_per_s"], 1), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=("step", "grid"))
    parser.add_argument("--out", required=True)
    parser.add_argument(
        "--models", nargs="+", help=f"step: default {STEP_MODELS}; grid: default {GRID_MODELS}"
    )
    parser.add_argument("--members", nargs="+", type=int, default=[1, 4, 16, 32, 64])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument(
        "--formats",
        nargs="+",
        help="step: one run per quant.format, every member of it (default: integer 2 and 4 bits)",
    )
    parser.add_argument("--deadline", type=float, default=280.0, help="seconds per side")
    parser.add_argument("--tokens", nargs="+", default=["16M"], help="grid: budgets per cell")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="grid: seeds")
    parser.add_argument("--extra", nargs="*", default=[], help="Hydra overrides for every cell")
    args = parser.parse_args()
    results = run_step(args) if args.mode == "step" else run_grid(args)
    write_record(args.out, mode=args.mode, **results)


if __name__ == "__main__":
    main()
