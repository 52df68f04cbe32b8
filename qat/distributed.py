"""The process group of a multi-process cell, from whichever launcher started it.

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT itself. Under srun (one
task per GPU, submitit's SLURM launcher with tasks_per_node > 1) they are derived from SLURM's
variables: no ssh, pdsh or hostfile. A plain ``python train.py trainer=deepspeed`` is a group of
one on a free local port.
"""

from __future__ import annotations

import os
import socket
import subprocess
from dataclasses import dataclass

import torch
import torch.distributed as dist

from qat.errors import TrainingError
from qat.extras import require


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device_type: str) -> DistInfo:
    """Join (or create) the default process group: NCCL on GPUs, gloo on CPUs."""
    _environment_from_slurm()
    _environment_for_one_process()
    info = DistInfo(
        rank=int(os.environ["RANK"]),
        world_size=int(os.environ["WORLD_SIZE"]),
        local_rank=int(os.environ["LOCAL_RANK"]),
    )
    if device_type == "cuda":
        if info.local_rank >= torch.cuda.device_count():
            raise TrainingError(
                f"local rank {info.local_rank} has no GPU: {torch.cuda.device_count()} visible "
                "on this node; launch one process per GPU"
            )
        torch.cuda.set_device(info.local_rank)
    deepspeed = require("deepspeed", "deepspeed", needed_for="trainer=deepspeed")
    if not dist.is_initialized():
        deepspeed.init_distributed(
            dist_backend="nccl" if device_type == "cuda" else "gloo", verbose=False
        )
    return info


def _environment_from_slurm() -> None:
    if "RANK" in os.environ or int(os.environ.get("SLURM_NTASKS", "1")) <= 1:
        return
    os.environ["RANK"] = os.environ["SLURM_PROCID"]
    os.environ["WORLD_SIZE"] = os.environ["SLURM_NTASKS"]
    os.environ["LOCAL_RANK"] = os.environ["SLURM_LOCALID"]
    os.environ.setdefault("MASTER_ADDR", _first_host(os.environ["SLURM_JOB_NODELIST"]))
    # Every task of the job computes the same port; jobs on one node get different ones.
    os.environ.setdefault("MASTER_PORT", str(20000 + int(os.environ["SLURM_JOB_ID"]) % 20000))


def _first_host(nodelist: str) -> str:
    try:
        shown = subprocess.run(
            ["scontrol", "show", "hostnames", nodelist],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
        return shown.stdout.split()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        # Without scontrol, a single-node list ("node1") is its own first host.
        if "[" in nodelist or "," in nodelist:
            raise TrainingError(
                f"cannot expand SLURM_JOB_NODELIST={nodelist!r} without scontrol; "
                "set MASTER_ADDR to the first node's address"
            ) from None
        return nodelist


def _environment_for_one_process() -> None:
    if "RANK" in os.environ:
        return
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(_free_port()))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def broadcast(value: object, info: DistInfo) -> object:
    """Rank 0's ``value`` on every rank."""
    if info.world_size == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def reduce_sum(values: list[float], info: DistInfo, device: torch.device) -> list[float]:
    if info.world_size == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def barrier(info: DistInfo) -> None:
    if info.world_size > 1:
        dist.barrier()


def leave_together(info: DistInfo) -> None:
    """The last collective of a cell, before any rank may exit.

    A gloo worker thread frees a finished all-reduce's tensors only after the waiting rank has
    moved on; a rank that then exits at once can be finalizing Python by the time the worker
    needs the GIL for them, and the worker aborts the process (std::terminate: a finished run
    reported as failed, 1 CPU launch in ~30). A barrier holds no tensors, and while a rank waits
    in it for the others the workers have long freed the earlier ones.
    """
    barrier(info)
