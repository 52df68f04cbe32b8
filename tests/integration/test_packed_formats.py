"""trainer=packed with float formats: one pack of every float format, an integer cell and an FP
cell, each member ending where the same cell trained alone (trainer=torch) ends (its losses and
its final weights), and recorded under the same run key, run name and params.

CPU, fp32, one thread, as tests/integration/test_packed.py (its tolerance). Two NVFP4 members
are in QAT together: stacked as one tensor they would share NVFP4's per-tensor scale. At these
budgets that moves a loss by ~3e-5 only (barely past the tolerance), but the final weights by
up to the size of the largest weight (measured: a scale 100% off), far past it.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import torch

from qat.checkpoint import latest_checkpoint
from qat.config import RunConfig
from tests.integration.conftest import runs
from tests.integration.test_packed import BASE, TOLERANCE, relative

# quant.format, bits, qat_frac, optim.lr. The NVFP4 members overlap in QAT; the one with the
# higher learning rate moves its amax of w/α away from the other's (both start at 6).
MEMBERS = (
    ("fp4_e2m1", 4, 0.5, 3e-3),
    ("fp6_e2m3", 6, 0.5, 3e-3),
    ("fp6_e3m2", 6, 0.5, 3e-3),
    ("fp8_e4m3", 8, 0.5, 3e-3),
    ("mxfp4", 4, 0.5, 3e-3),
    ("nvfp4", 4, 0.5, 3e-3),
    ("nvfp4", 4, 0.75, 1e-2),
    ("int", 4, 0.5, 3e-3),
    ("int", 16, 0.5, 3e-3),
)
# Params a member records otherwise than an unpacked cell: the engine that trained it, and where
# (each side of the test has its own run folders and experiment).
ENGINE_PARAMS = {"trainer.backend", "run_dir", "tracking.experiment"}


def cell_configs(workdir: Path, data_root: Path, backend: str) -> list[RunConfig]:
    """The members with ``backend``, in their own run folders and MLflow experiment (one store
    for both sides: creating a store costs seconds)."""
    from qat.orchestration.grid import expand_grid

    os.environ["QAT_DATA_DIR"] = str(data_root)
    base = [o for o in BASE if not o.startswith("data.eval_tokens=")]
    configs = []
    for name, bits, frac, lr in MEMBERS:
        overrides = [
            *base,
            "data.eval_tokens=2048",
            f"trainer={backend}",
            "trainer.progress=false",
            f"quant.format={name}",
            f"bits={bits}",
            f"qat_frac={frac}",
            f"optim.lr={lr}",
            "tokens=8K",
            f"run_dir={workdir / backend}",
            f"tracking.uri=sqlite:///{workdir}/mlflow.db",
            f"tracking.experiment={backend}",
        ]
        configs.extend(expand_grid(overrides))
    return configs


def final_weights(config: RunConfig) -> tuple[int, dict[str, torch.Tensor]]:
    """The tokens and state_dict of a cell's last checkpoint (saved at its end)."""
    final = latest_checkpoint(Path(config.run_dir) / config.run_key / "checkpoints")
    assert final is not None
    return final.tokens, final.model_state()


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_a_pack_of_float_formats_ends_where_each_cell_ends_alone(tmp_path, data_root):
    from qat.cell import run_cell
    from qat.orchestration.packs import run_packs

    configs = cell_configs(tmp_path, data_root, "packed")
    outcomes = run_packs(configs)
    members = {r.data.tags["run_key"]: r for r in runs(tmp_path, "packed")}
    assert len({r.data.tags["pack_key"] for r in members.values()}) == 1  # one pack, every format

    singles = cell_configs(tmp_path, data_root, "torch")
    for pack_member, single in zip(configs, singles, strict=True):
        assert pack_member.run_key == single.run_key
        label = (single.quant.format, single.bits, single.qat_frac)
        alone = run_cell(dataclasses.replace(single, trunk="share"))
        member = outcomes[pack_member.run_key]
        assert not isinstance(member, Exception), (label, member)
        assert relative(member.final_val_loss, alone.final_val_loss) <= TOLERANCE, (
            label,
            member.final_val_loss,
            alone.final_val_loss,
        )
        assert member.fp_val_loss is not None and alone.fp_val_loss is not None
        assert relative(member.fp_val_loss, alone.fp_val_loss) <= TOLERANCE, label
        (tokens, ours), (tokens_alone, theirs) = final_weights(pack_member), final_weights(single)
        assert tokens == tokens_alone and ours.keys() == theirs.keys()
        for name, value in theirs.items():
            error = (ours[name] - value).abs().max() / value.abs().max()
            assert error <= TOLERANCE, (label, name, error.item())

    unpacked = {r.data.tags["run_key"]: r for r in runs(tmp_path, "torch")}
    assert members.keys() == unpacked.keys() == {c.run_key for c in configs}
    for key, run in members.items():
        cell = unpacked[key]
        assert run.info.status == cell.info.status == "FINISHED"
        assert run.info.run_name == cell.info.run_name
        differ = {
            name
            for name in run.data.params.keys() | cell.data.params.keys()
            if run.data.params.get(name) != cell.data.params.get(name)
        }
        assert differ == ENGINE_PARAMS, (run.info.run_name, differ)
