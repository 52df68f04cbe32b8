"""trainer=deepspeed on CPU (gloo), launched like users launch it: `python train.py` for one
process, torchrun for two. ZeRO-2 with the FP→QAT switch, a SIGKILL after the switch and the
resume, and equivalence with trainer=torch."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import psutil  # a DeepSpeed dependency
import pytest
import torch

from qat.quant import as_format, init_scale
from tests.integration.conftest import REPO, VOCAB, runs, train, train_env
from tests.integration.test_resume import wait_for_checkpoint

CELL = (
    "model=nano",
    "bits=2",
    "qat_frac=0.5",
    "tokens=100K",
    f"data.vocab_size={VOCAB}",
    "data.batch_size=8",
    "data.seq_len=64",
    "data.eval_tokens=8192",
    "trainer.ckpt_every_frac=0.1",
    "trainer.log_every=5",
)
DEEPSPEED = (*CELL, "trainer=deepspeed", "trainer.progress=false")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def torchrun_command(*overrides: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={_free_port()}",
        str(REPO / "train.py"),
        *overrides,
    ]


def torchrun_env(workdir, data_root) -> dict[str, str]:
    # DS_ACCELERATOR follows the device (the DeepSpeed backend sets it): cpu here, cuda on GPUs.
    return {**train_env(workdir, data_root), "OMP_NUM_THREADS": "1"}


def torchrun(workdir, data_root, *overrides: str):
    workdir.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        torchrun_command(*overrides),
        cwd=workdir,
        env=torchrun_env(workdir, data_root),
        capture_output=True,
        text=True,
        timeout=900,
    )


def launch_failure(stderr: str) -> str:
    """What a failed torchrun printed: the first rank's error (it comes first, and the
    other ranks' follow-on errors push it out of a plain tail), then the tail."""
    starts = [i for i in (stderr.find("Traceback"), stderr.find("terminate called")) if i >= 0]
    first = stderr[min(starts) :][:2500] if starts else ""
    return f"{first}\n[...]\n{stderr[-1500:]}"


def losses(workdir) -> tuple[float, float, list[float]]:
    (run,) = runs(workdir)
    assert run.info.status == "FINISHED"
    (metrics,) = workdir.glob("runs/*/metrics.jsonl")
    curve = [
        r["train/loss"]
        for r in map(json.loads, metrics.read_text().splitlines())
        if "train/loss" in r
    ]
    return run.data.metrics["final/val_loss"], run.data.metrics["fp/val_loss"], curve


@pytest.fixture(scope="module")
def torch_run(tmp_path_factory, data_root):
    workdir = tmp_path_factory.mktemp("torch")
    result = train(workdir, data_root, *CELL, "trunk=off")
    assert result.returncode == 0, launch_failure(result.stderr)
    return losses(workdir)


@pytest.fixture(scope="module")
def zero2_run(tmp_path_factory, data_root):
    workdir = tmp_path_factory.mktemp("zero2")
    # keep every checkpoint: the scale test reads the first one after the switch
    result = torchrun(
        workdir, data_root, *DEEPSPEED, "trainer.zero_stage=2", "trainer.keep_checkpoints=99"
    )
    assert result.returncode == 0, launch_failure(result.stderr)
    return workdir, losses(workdir)


def test_one_process_stage0_gives_the_torch_curve(tmp_path, data_root, torch_run):
    result = train(tmp_path, data_root, *DEEPSPEED)
    assert result.returncode == 0, launch_failure(result.stderr)
    final, fp, curve = losses(tmp_path)
    assert final == pytest.approx(torch_run[0], rel=1e-5)
    assert fp == pytest.approx(torch_run[1], rel=1e-5)
    assert curve == pytest.approx(torch_run[2], rel=1e-4)
    (run,) = runs(tmp_path)
    assert run.data.params["trainer.backend"] == "deepspeed"
    assert run.data.params["world_size"] == "1"


def assert_same_training(run, expected) -> None:
    """Same global batches, summed in another order: the FP phase agrees to float rounding;
    2-bit QAT then amplifies those last bits (a weight near a rounding threshold flips), so
    after the switch the curves agree to the noise of the run, not bit for bit."""
    final, fp, curve = run
    switch = len(curve) // 2
    assert fp == pytest.approx(expected[1], rel=1e-4)
    assert curve[:switch] == pytest.approx(expected[2][:switch], rel=1e-4)
    assert curve == pytest.approx(expected[2], rel=1e-2)
    assert final == pytest.approx(expected[0], rel=5e-3)


def test_gradient_accumulation_keeps_the_global_batch(tmp_path, data_root, torch_run):
    result = train(tmp_path, data_root, *DEEPSPEED, "trainer.grad_accum=2")
    assert result.returncode == 0, launch_failure(result.stderr)
    assert_same_training(losses(tmp_path), torch_run)


def test_two_processes_zero2_match_one(zero2_run, torch_run):
    workdir, result = zero2_run
    (run,) = runs(workdir)
    assert run.data.params["world_size"] == "2"
    assert run.data.params["trainer.zero_stage"] == "2"
    assert_same_training(result, torch_run)


def _module_state(checkpoint) -> dict[str, torch.Tensor]:
    # DeepSpeed's own file (it pickles its config too): written by the test's run, so trusted.
    path = checkpoint / "engine" / "mp_rank_00_model_states.pt"
    return torch.load(path, map_location="cpu", weights_only=False)["module"]


def test_the_scales_start_from_the_switch_weights_and_train(zero2_run):
    workdir, _ = zero2_run
    checkpoints = sorted(
        (p for p in workdir.glob("runs/*/checkpoints/[0-9]*") if (p / "COMPLETE").exists()),
        key=lambda p: int(p.name),
    )
    states = [json.loads((p / "state.json").read_text()) for p in checkpoints]
    assert all(s["backend"] == "deepspeed" and s["world_size"] == 2 for s in states)
    switch = next(i for i, s in enumerate(states) if not s["quantized"])
    first, last = switch + 1, len(states) - 1
    assert last > first, "want two checkpoints after the QAT switch"
    at_switch = _module_state(checkpoints[switch])
    soon, trained = _module_state(checkpoints[first]), _module_state(checkpoints[last])
    scale_names = [name for name in trained if name.endswith(".scale")]
    assert scale_names
    # Adam moves a parameter by about lr (3e-3 at most) per step.
    steps_in = states[first]["step"] - states[switch]["step"]
    fmt = as_format(2)
    for name in scale_names:
        initial = init_scale(at_switch[name.removesuffix("scale") + "weight"].float(), fmt)
        early = (soon[name] - initial).abs().max().item()
        assert early < 1.5 * 3e-3 * steps_in, f"{name} did not start from the switch weights"
        assert (trained[name] - initial).abs().max().item() > 1e-3, f"{name} did not train"


def kill_torchrun_after_the_switch(workdir, data_root, *overrides: str) -> None:
    """Start a two-process run and SIGKILL it once a QAT checkpoint is complete."""
    # To a file, not a pipe nobody reads: a full pipe would stall the run before the switch.
    with open(workdir / "killed_run.log", "w") as log:
        proc = subprocess.Popen(
            torchrun_command(*overrides),
            cwd=workdir,
            env=torchrun_env(workdir, data_root),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    wait_for_checkpoint(workdir, quantized=True, proc=proc)
    # torchrun starts its workers in sessions of their own: kill them, then torchrun.
    workers = psutil.Process(proc.pid).children(recursive=True)
    for worker in workers:
        worker.kill()
    proc.kill()
    proc.wait()
    # Gone, not just signalled: a worker in the middle of a write would finish that system
    # call, and the resumed run must not see its checkpoint folder change under it.
    _, alive = psutil.wait_procs(workers, timeout=60)
    assert not alive, f"workers still running after SIGKILL: {alive}"


def test_killed_after_the_switch_resumes_to_the_same_loss(tmp_path, data_root, zero2_run):
    overrides = (*DEEPSPEED, "trainer.zero_stage=2")
    kill_torchrun_after_the_switch(tmp_path, data_root, *overrides)
    (run,) = runs(tmp_path)
    assert run.info.status == "RUNNING" and "final/val_loss" not in run.data.metrics
    resumed = torchrun(tmp_path, data_root, *overrides)
    assert resumed.returncode == 0, launch_failure(resumed.stderr)
    assert "resuming from" in resumed.stdout
    final, fp, _ = losses(tmp_path)
    _, (expected_final, expected_fp, _) = zero2_run
    assert fp == expected_fp
    assert final == pytest.approx(expected_final, rel=1e-6)


def test_a_torch_checkpoint_is_not_resumed_by_deepspeed(tmp_path, data_root):
    cell = (*CELL, "trunk=off", "tokens=20K")
    assert train(tmp_path, data_root, *cell).returncode == 0
    (tmp_path / "mlflow.db").unlink()  # forget the finished run; its checkpoints stay
    result = train(tmp_path, data_root, *cell, "trainer=deepspeed")
    assert result.returncode == 1
    assert "was written by trainer=torch" in result.stderr


def test_bf16_autocast_reaches_the_engine(tmp_path, data_root):
    # trainer.precision=bf16 through the engine trains as trainer=torch does. (On a GPU the
    # engine would switch an outer CUDA autocast off without its torch_autocast section; CPU
    # autocast is left alone, so test_deepspeed_config checks that section.)
    short = (*CELL, "bits=16", "tokens=20K", "trainer.precision=bf16")
    torch_dir, ds_dir = tmp_path / "torch", tmp_path / "deepspeed"
    assert train(torch_dir, data_root, *short, "trunk=off").returncode == 0
    result = train(ds_dir, data_root, *short, "trainer=deepspeed")
    assert result.returncode == 0, launch_failure(result.stderr)
    fp32 = train(
        tmp_path / "fp32", data_root, *short, "trainer=deepspeed", "trainer.precision=fp32"
    )
    assert fp32.returncode == 0
    bf16_torch, bf16_ds, fp32_ds = losses(torch_dir), losses(ds_dir), losses(tmp_path / "fp32")
    assert bf16_ds[2] == pytest.approx(bf16_torch[2], rel=1e-5)
    assert bf16_ds[0] == pytest.approx(bf16_torch[0], rel=1e-5)
    assert bf16_ds[0] != pytest.approx(fp32_ds[0], rel=1e-5)  # bf16 really was in effect
