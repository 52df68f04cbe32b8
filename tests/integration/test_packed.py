"""trainer=packed: each member of a pack ends where the same cell trained alone ends.

CPU, fp32, one thread: the pack computes each member's maths in the single-cell order, so the
results agree to 1e-5 relative (measured: ≤ 1e-7, from the validation sums). With several threads
a reduction is split by its shape, and the last-bit differences that gives flip fake-quant
roundings: QAT cells then differ by up to ~1e-3 (docs/packed.md). Covered: members with
different bits, fractions, fusion, budgets and seeds; a member forked from the in-pack trunk
against a cell branched from the stored trunk; a pack of one against the single-cell trainer; a
pack killed with SIGKILL and resumed; a member's MLflow run against an unpacked cell's.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qat.config import RunConfig
from qat.errors import ConfigError
from tests.integration.conftest import REPO, VOCAB, runs, train, train_env

TOLERANCE = 1e-5
BASE = (
    "model=nano",
    f"data.vocab_size={VOCAB}",
    "data.batch_size=4",
    "data.seq_len=64",
    "data.eval_tokens=8192",
    "schedule.warmup_tokens=2K",
    "trainer.device=cpu",
    "trainer.log_every=5",
)
# bits, qat_frac, tokens, fusion, seed: every way members may differ.
MEMBERS = (
    (4, 0.5, "40K", False, 0),
    (2, 0.25, "20K", True, 0),
    (1.58, 0.5, "20K", False, 0),
    (16, 0.5, "20K", False, 0),
    (4, 0.25, "20K", False, 1),
)


def cell_configs(workdir: Path, data_root: Path, backend: str, members=MEMBERS) -> list[RunConfig]:
    from qat.orchestration.grid import expand_grid

    os.environ["QAT_DATA_DIR"] = str(data_root)
    configs = []
    for bits, frac, tokens, fusion, seed in members:
        overrides = [
            *BASE,
            f"trainer={backend}",
            "trainer.device=cpu",
            "trainer.log_every=5",
            "trainer.progress=false",
            f"bits={bits}",
            f"qat_frac={frac}",
            f"tokens={tokens}",
            f"fusion={str(fusion).lower()}",
            f"seed={seed}",
            f"run_dir={workdir / 'runs'}",
            f"tracking.uri=sqlite:///{workdir}/mlflow.db",
        ]
        configs.extend(expand_grid(overrides))
    return configs


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def relative(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


@pytest.fixture(scope="module")
def packed(tmp_path_factory, data_root):
    """The members trained as one pack, in process."""
    from qat.pack import run_pack

    workdir = tmp_path_factory.mktemp("packed")
    configs = cell_configs(workdir, data_root, "packed")
    outcome = run_pack(configs)
    assert not outcome.failures
    return workdir, configs, outcome


def test_each_member_ends_where_it_ends_alone(packed, tmp_path, data_root):
    """Alone: trainer=torch with the stored trunk (trunk=share) for every member."""
    from qat.cell import run_cell

    _, configs, outcome = packed
    alone = cell_configs(tmp_path, data_root, "torch")
    for pack_member, single in zip(configs, alone, strict=True):
        result = run_cell(dataclasses.replace(single, trunk="share"))
        member = outcome.results[pack_member.run_key]
        assert relative(member.final_val_loss, result.final_val_loss) <= TOLERANCE, (
            pack_member.bits,
            member.final_val_loss,
            result.final_val_loss,
        )
        if result.fp_val_loss is not None:
            assert member.fp_val_loss is not None
            assert relative(member.fp_val_loss, result.fp_val_loss) <= TOLERANCE


def test_a_pack_of_one_equals_the_single_cell_trainer(tmp_path, data_root):
    from qat.cell import run_cell
    from qat.pack import run_single

    (member,) = cell_configs(tmp_path / "pack", data_root, "packed", MEMBERS[:1])
    (single,) = cell_configs(tmp_path / "single", data_root, "torch", MEMBERS[:1])
    packed = run_single(member)
    alone = run_cell(dataclasses.replace(single, trunk="off"))
    assert relative(packed.final_val_loss, alone.final_val_loss) <= TOLERANCE
    assert packed.fp_val_loss is not None and alone.fp_val_loss is not None
    assert relative(packed.fp_val_loss, alone.fp_val_loss) <= TOLERANCE


def test_a_member_run_has_the_schema_of_an_unpacked_cell(packed, tmp_path, data_root):
    from qat.cell import run_cell

    workdir, configs, _ = packed
    (single,) = cell_configs(tmp_path, data_root, "torch", MEMBERS[:1])
    run_cell(single)
    (unpacked,) = runs(tmp_path)
    member = next(r for r in runs(workdir) if r.data.tags["run_key"] == configs[0].run_key)
    assert member.info.status == "FINISHED"
    assert set(member.data.params) == set(unpacked.data.params)
    assert set(member.data.metrics) == set(unpacked.data.metrics)
    assert {"trunk_key", "branch_tokens", "run_key"} <= set(member.data.tags)
    assert member.data.params["trainer.backend"] == "packed"
    # The curve starts with the trunk's prefix, at the tokens of an unpacked cell's first log.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    steps = [m.step for m in client.get_metric_history(member.info.run_id, "train/loss")]
    assert steps[0] == 5 * 4 * 64 and steps == sorted(steps)
    assert steps[-1] == int(member.data.params["tokens_total"])


def test_a_rerun_skips_finished_members(packed):
    from qat.pack import run_pack

    _, configs, first = packed
    again = run_pack(configs)
    assert all(result.skipped for result in again.results.values())
    for key, result in again.results.items():
        assert result.final_val_loss == first.results[key].final_val_loss


def test_cells_of_another_shape_are_refused_in_one_line(tmp_path, data_root):
    from qat.engine.packed import plan_members

    configs = cell_configs(tmp_path, data_root, "packed", MEMBERS[:2])
    other = dataclasses.replace(configs[1], model=dataclasses.replace(configs[1].model, n_layers=3))
    with pytest.raises(ConfigError, match=r"does not fit the pack.*model\.n_layers 2 vs 3"):
        plan_members([configs[0], other])


GRID = (
    "-m",
    *BASE,
    "trainer=packed",
    "bits=2,4",
    "qat_frac=0.25,0.5",
    "tokens=60K",
    "trainer.ckpt_every_frac=0.1",
)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data_root) -> dict[str, float]:
    """final/val_loss by run key of GRID trained without interruption."""
    workdir = tmp_path_factory.mktemp("clean")
    clean = train(workdir, data_root, *GRID)
    assert clean.returncode == 0, clean.stderr[-3000:]
    expected = {r.data.tags["run_key"]: r.data.metrics["final/val_loss"] for r in runs(workdir)}
    assert len(expected) == 4
    return expected


def finished_losses(workdir: Path) -> dict[str, float]:
    return {
        r.data.tags["run_key"]: r.data.metrics["final/val_loss"]
        for r in runs(workdir)
        if r.info.status == "FINISHED"
    }


def start_training(workdir: Path, data_root: Path, overrides) -> subprocess.Popen:
    """train.py in the background in ``workdir`` (as conftest's ``train``, without waiting)."""
    workdir.mkdir()
    flags = [o for o in overrides if o.startswith("-")]
    rest = [o for o in overrides if not o.startswith("-")]
    return subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), *flags, "trainer.progress=false", *rest],
        cwd=workdir,
        env=train_env(workdir, data_root),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def test_a_killed_pack_resumes_every_unfinished_member(tmp_path, data_root, uninterrupted):
    workdir = tmp_path / "killed"
    proc = start_training(workdir, data_root, GRID)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not list(
        workdir.glob("runs/packs/*/checkpoints/*/COMPLETE")
    ):
        time.sleep(0.2)
    time.sleep(1.0)  # somewhere past the first checkpoint
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list(workdir.glob("runs/packs/*/checkpoints/*/COMPLETE")), "no checkpoint before kill"

    resumed = train(workdir, data_root, *GRID)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stdout
    assert finished_losses(workdir) == uninterrupted


def test_an_interrupted_pack_checkpoints_where_it_stopped(tmp_path, data_root, uninterrupted):
    """SIGINT (Ctrl-C, node_grid's deadline) stops a pack at the next step boundary with a
    checkpoint of that step, though no periodic checkpoint is due; the rerun resumes there."""
    workdir = tmp_path / "interrupted"
    grid = [*GRID, "trainer.ckpt_every_frac=1.0"]  # no periodic checkpoint before the end
    proc = start_training(workdir, data_root, grid)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        # The first logged window: the loop runs, far from its last step.
        if any(path.stat().st_size for path in workdir.glob("runs/*/metrics.jsonl")):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the pack ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=120)
    assert proc.returncode != 0
    checkpoints = list(workdir.glob("runs/packs/*/checkpoints/*/COMPLETE"))
    assert len(checkpoints) == 1, "an interrupted pack must leave exactly its stopping checkpoint"
    assert {r.info.status for r in runs(workdir)} <= {"KILLED", "FINISHED"}

    resumed = train(workdir, data_root, *grid)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stdout
    assert finished_losses(workdir) == uninterrupted
