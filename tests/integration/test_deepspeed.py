"""trainer=deepspeed on CPU (gloo), launched like users launch it: `python train.py` for one
process, torchrun for two. ZeRO-2 with the FP→QAT switch, a SIGKILL after the switch and the
resume, and equivalence with trainer=torch: bit for bit where both backends do the same
arithmetic, to the run's own rounding noise where they do not."""

from __future__ import annotations

import json
import os
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
# Gradient clipping off: the one computation the two backends do differently (see
# test_one_process_stage0_gives_the_torch_curve), so one process at stage 0 matches bit for bit.
UNCLIPPED = ("optim.grad_clip=0",)


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


@pytest.fixture(scope="module")
def unclipped_torch_run(tmp_path_factory, data_root):
    workdir = tmp_path_factory.mktemp("torch_unclipped")
    result = train(workdir, data_root, *CELL, *UNCLIPPED, "trunk=off")
    assert result.returncode == 0, launch_failure(result.stderr)
    return losses(workdir)


def test_one_process_stage0_gives_the_torch_curve(tmp_path, data_root, unclipped_torch_run):
    """One process at ZeRO stage 0 trains what trainer=torch trains, bit for bit.

    With clipping on, the backends differ in one computation: DeepSpeed's clip_grad_norm_
    (deepspeed/runtime/utils.py) adds the squared per-parameter norms, torch's takes
    torch.linalg.vector_norm of them, and the total norms differ in the last bit on about one
    step in ten (the per-parameter norms agree). That moves the weights only on a step where
    clipping binds (3 to 5 of the cell's 195), where the 2-bit phase then amplifies one ulp of
    the clip factor into 3e-2 in the weights: measured final/val_loss 2.7e-4 apart on a Xeon
    with AVX-512, equal with AVX2 kernels (no binding step had a differing norm). A tolerance
    on final/val_loss wide enough for that is as wide as the run's own noise (trainer=torch with
    1 or 2 threads: 3e-4 to 1.1e-3 apart) and as a learning rate 10% off (1.2e-3). Without
    clipping both do the same operations in the same order (the loss and gradients divided by
    one micro-step, an all-reduce over one rank), so any difference is a real one. Clipping under
    DeepSpeed is compared at the noise level by the grad-accumulation and ZeRO-2 tests below."""
    result = train(tmp_path, data_root, *DEEPSPEED, *UNCLIPPED)
    assert result.returncode == 0, launch_failure(result.stderr)
    final, fp, curve = losses(tmp_path)
    expected_final, expected_fp, expected_curve = unclipped_torch_run
    assert curve == expected_curve
    assert fp == expected_fp
    assert final == expected_final
    (run,) = runs(tmp_path)
    assert run.data.params["trainer.backend"] == "deepspeed"
    assert run.data.params["world_size"] == "1"
    assert run.data.params["optim.grad_clip"] == "0.0"


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


BF16 = (*CELL, *UNCLIPPED, "bits=16", "tokens=20K", "trainer.precision=bf16")


def test_bf16_autocast_reaches_the_engine(tmp_path, data_root):
    """Inside the engine's forward every Linear computes in bfloat16 under trainer.precision=bf16
    and in float32 under fp32. (Final losses are no proof: this short run ends near the unigram
    entropy, where bf16 rounding averages out, 4e-6 from the fp32 run on a Xeon.) On a GPU the
    engine would switch an outer CUDA autocast off without its torch_autocast section, and this
    probe would see float32; CPU autocast is left alone, so test_deepspeed_config checks that
    section."""
    probe = subprocess.run(
        [sys.executable, "-m", "tests.integration.engine_probe", *BF16, "trainer.progress=false"],
        cwd=tmp_path,
        # run from tmp_path, not the checkout: nothing the engine writes lands in the repo
        env={**train_env(tmp_path, data_root), "PYTHONPATH": _with_repo_path()},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert probe.returncode == 0, launch_failure(probe.stderr)
    dtypes = json.loads(probe.stdout.splitlines()[-1])
    assert len(dtypes["bf16"]) == len(dtypes["fp32"]) == 15  # nano: 2 blocks of 7, the output
    assert all(seen == ["torch.bfloat16"] for seen in dtypes["bf16"].values()), dtypes["bf16"]
    assert all(seen == ["torch.float32"] for seen in dtypes["fp32"].values()), dtypes["fp32"]


def _with_repo_path() -> str:
    return os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)


def test_bf16_gives_the_torch_curve(tmp_path, data_root):
    # Bit for bit, as at fp32 (clipping, the one computation done differently, is off): the
    # engine's autocast nests inside the trainer's with the same dtype, and no module is marked
    # for bf16 gradient reduction.
    torch_dir, ds_dir = tmp_path / "torch", tmp_path / "deepspeed"
    assert train(torch_dir, data_root, *BF16, "trunk=off").returncode == 0
    result = train(ds_dir, data_root, *BF16, "trainer=deepspeed")
    assert result.returncode == 0, launch_failure(result.stderr)
    assert losses(ds_dir) == losses(torch_dir)
