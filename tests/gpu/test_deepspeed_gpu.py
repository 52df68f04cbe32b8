"""trainer=deepspeed on two GPUs (NCCL, ZeRO-2, bf16 autocast): a QAT run ends within 1% of the
one-GPU trainer=torch run, and a run killed after the QAT switch resumes to the same place.

Needs two CUDA GPUs and the bundled-large corpus in $QAT_DATA_DIR (the device script carries
it). Run on the lent machine: PYTHONPATH=. python3 -m pytest -m gpu tests/gpu/test_deepspeed_gpu.py
"""

from __future__ import annotations

import pytest
import torch

from tests.integration.conftest import runs, train
from tests.integration.test_deepspeed import (
    kill_torchrun_after_the_switch,
    launch_failure,
    losses,
    torchrun,
)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs"),
]

CELL = (
    "model=mini-s",
    "data=bundled-large",
    "data.seq_len=256",
    "data.batch_size=64",
    "data.eval_tokens=262144",
    "schedule.warmup_tokens=500K",
    "bits=4",
    "qat_frac=0.3",
    "tokens=8M",
    "trainer.ckpt_every_frac=0.2",
    "trainer.log_every=20",
    "trunk=off",
)
ZERO2 = (*CELL, "trainer=deepspeed", "trainer.zero_stage=2", "trainer.progress=false")


@pytest.fixture(scope="module")
def data_dir():
    import os
    from pathlib import Path

    root = Path(os.environ.get("QAT_DATA_DIR", "data_cache"))
    if not (root / "bundled-large-v4096" / "meta.json").exists():
        pytest.fail(f"no prepared bundled-large-v4096 under {root}: set QAT_DATA_DIR")
    return root


@pytest.fixture(scope="module")
def one_gpu(tmp_path_factory, data_dir):
    workdir = tmp_path_factory.mktemp("torch1")
    result = train(workdir, data_dir, *CELL)
    assert result.returncode == 0, launch_failure(result.stderr)
    return losses(workdir)


@pytest.fixture(scope="module")
def two_gpus(tmp_path_factory, data_dir):
    workdir = tmp_path_factory.mktemp("zero2")
    result = torchrun(workdir, data_dir, *ZERO2)
    assert result.returncode == 0, launch_failure(result.stderr)
    return losses(workdir)


def test_zero2_on_two_gpus_ends_within_one_percent_of_one_gpu(one_gpu, two_gpus):
    final, fp, _ = two_gpus
    print(f"final/val_loss: 1 GPU torch {one_gpu[0]:.4f}, 2 GPUs ZeRO-2 {final:.4f}")
    assert final == pytest.approx(one_gpu[0], rel=0.01)
    assert fp == pytest.approx(one_gpu[1], rel=0.01)


def test_killed_zero2_run_resumes(tmp_path, data_dir, two_gpus):
    kill_torchrun_after_the_switch(tmp_path, data_dir, *ZERO2)
    (run,) = runs(tmp_path)
    assert run.info.status == "RUNNING"
    resumed = torchrun(tmp_path, data_dir, *ZERO2)
    assert resumed.returncode == 0, launch_failure(resumed.stderr)
    assert "resuming from" in resumed.stdout
    final, fp, _ = losses(tmp_path)
    print(f"final/val_loss: uninterrupted {two_gpus[0]:.4f}, resumed {final:.4f}")
    assert fp == pytest.approx(two_gpus[1], rel=1e-3)
    assert final == pytest.approx(two_gpus[0], rel=0.01)
