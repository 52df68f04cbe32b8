"""Run a grid on one machine's GPUs without SLURM: several workers per GPU, each a train.py -m.

    python -m qat.node_grid grid=mini --gpus 4 --workers-per-gpu 8
    python -m qat.node_grid grid=smoke bits=2,4 --gpus 0 --workers-per-gpu 2   # CPU only
    python -m qat.node_grid grid=mini trainer=packed --gpus 1   # packed: sub-grids as packs

Small models leave a GPU mostly idle (one process cannot launch kernels fast enough), so several
workers share each GPU, or, with ``trainer=packed``, each sub-grid (a model and a seed, by default)
is trained as one batched model (qat.pack) by one worker per GPU. The sweep is split into sub-grids
by the keys of ``--split`` (each sub-grid is one ``train.py -m`` with those keys fixed: one Python
start per sub-grid, not per cell); workers take sub-grids from a queue, biggest first as the grid
file lists them. Every trunk's branch points are registered before any worker starts, so no trunk
prefix is trained twice. A cell another worker holds is skipped by its claim, a FINISHED one by
MLflow: running the same command again finishes what is left. ``--deadline`` stops the workers
(SIGINT: the MLflow run is marked KILLED and resumes from its checkpoint next time) and exits 3.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m qat.node_grid", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for train.py -m")
    parser.add_argument("--gpus", type=int, default=None, help="GPUs to use (0: CPU); all")
    parser.add_argument(
        "--workers-per-gpu", type=int, default=None, help="default 4; 1 with trainer=packed"
    )
    parser.add_argument(
        "--split",
        default=None,
        help="keys fixed per sub-grid (default model,tokens,bits; model,seed with trainer=packed)",
    )
    parser.add_argument("--deadline", type=float, default=None, help="seconds, then stop")
    parser.add_argument("--log-dir", type=Path, default=None)
    # Intermixed: options may come before, between or after the Hydra overrides.
    args = parser.parse_intermixed_args(argv)
    packed = "trainer=packed" in args.overrides
    if args.workers_per_gpu is None:
        args.workers_per_gpu = 1 if packed else 4
    if args.split is None:
        # A pack is a (model × seed) sub-grid: one process that never trains a prefix twice.
        args.split = "model,seed" if packed else "model,tokens,bits"
    if args.workers_per_gpu < 1:
        parser.error("--workers-per-gpu must be >= 1")

    import torch

    from qat.orchestration.node_workers import run_grid

    gpus = torch.cuda.device_count() if args.gpus is None else args.gpus
    if gpus > torch.cuda.device_count():
        parser.error(f"--gpus {gpus}, but {torch.cuda.device_count()} are visible")
    base = [o for o in args.overrides if o not in ("-m", "--multirun")]
    split = [k for k in args.split.split(",") if k]
    from qat.errors import QatError, report
    from qat.orchestration.grid import expand_grid
    from qat.orchestration.preflight import check_tracking

    try:  # every cell valid and the tracking server up, before any worker starts
        for uri in sorted({config.tracking.uri for config in expand_grid(base)}):
            check_tracking(uri)
    except QatError as error:
        return report(error)
    return run_grid(base, gpus, args.workers_per_gpu, split, args.deadline, args.log_dir)


if __name__ == "__main__":
    sys.exit(main())
