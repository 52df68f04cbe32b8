"""data.train_fraction=0.5 on real cells (trainer=torch and trainer=packed, the bundled corpus):
the training batches come from the first half of the train split only (recorded at the loader's
gather of every batch), the validation data is unchanged, a pack of one still ends where the
single-cell trainer ends, and the run records the train split's size."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from qat.data import DatasetInfo
from tests.integration.test_packed import TOLERANCE, cell_configs, relative

CELL = ((4, 0.5, "20K", False, 0),)  # bits, qat_frac, tokens, fusion, seed


@pytest.fixture(autouse=True)
def one_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the pack is bitwise the single cell on one thread (test_packed)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def reads(monkeypatch):
    """(tokens in the array gathered from, last position read) of every batch drawn."""
    from qat.data import loader

    seen: list[tuple[int, int]] = []
    gather = loader._gather

    def recording(tokens: np.ndarray, windows: np.ndarray, seq_len: int):
        seen.append((len(tokens), int(windows.max()) * seq_len + seq_len))
        return gather(tokens, windows, seq_len)

    monkeypatch.setattr(loader, "_gather", recording)
    return seen


def half(configs):
    return [
        dataclasses.replace(c, data=dataclasses.replace(c.data, train_fraction=0.5))
        for c in configs
    ]


def test_half_the_data_reads_the_first_half_of_the_train_split(tmp_path, data_root, reads):
    from qat.cell import run_cell
    from qat.pack import run_single
    from tests.conftest import VOCAB

    info = DatasetInfo.load(data_root / f"bundled-v{VOCAB}")
    prefix = math.floor(0.5 * info.n_train_tokens)
    (full,) = cell_configs(tmp_path / "full", data_root, "torch", CELL)
    (single,) = half(cell_configs(tmp_path / "single", data_root, "torch", CELL))
    (member,) = half(cell_configs(tmp_path / "pack", data_root, "packed", CELL))
    assert single.run_key != full.run_key and member.run_key == single.run_key

    alone = run_cell(dataclasses.replace(single, trunk="off"))
    train_reads = [last for size, last in reads if size != info.n_val_tokens]
    assert {size for size, _ in reads if size != info.n_val_tokens} == {prefix}
    assert len(train_reads) == 20_000 // (4 * 64)  # every optimizer step's batch
    assert 0.3 * prefix < max(train_reads) <= prefix  # spread over the half, never past it

    reads.clear()
    packed = run_single(member)
    train_reads = [last for size, last in reads if size != info.n_val_tokens]
    assert {size for size, _ in reads if size != info.n_val_tokens} == {prefix}
    assert 0.3 * prefix < max(train_reads) <= prefix
    assert any(size == info.n_val_tokens for size, _ in reads)  # validation: the whole shard
    assert relative(packed.final_val_loss, alone.final_val_loss) <= TOLERANCE

    for workdir, result in ((tmp_path / "single", alone), (tmp_path / "pack", packed)):
        run = MlflowClient(f"sqlite:///{workdir}/mlflow.db").get_run(result.run_id)
        assert run.data.params["data.train_fraction"] == "0.5"
        assert run.data.params["data_train_tokens"] == str(info.n_train_tokens)


def test_a_spread_half_reads_windows_across_the_whole_train_split(tmp_path, data_root, reads):
    """data.train_part=spread: batches from windows over the whole split (trainer=torch and
    trainer=packed alike), still a pack of one ending where the single cell ends."""
    from qat.cell import run_cell
    from qat.pack import run_single
    from tests.conftest import VOCAB

    info = DatasetInfo.load(data_root / f"bundled-v{VOCAB}")
    spread = {"train_fraction": 0.5, "train_part": "spread"}
    (single,) = cell_configs(tmp_path / "single", data_root, "torch", CELL)
    (member,) = cell_configs(tmp_path / "pack", data_root, "packed", CELL)
    single, member = (
        dataclasses.replace(c, data=dataclasses.replace(c.data, **spread)) for c in (single, member)
    )
    alone = run_cell(dataclasses.replace(single, trunk="off"))
    train_reads = [last for size, last in reads if size != info.n_val_tokens]
    assert {size for size, _ in reads if size != info.n_val_tokens} == {info.n_train_tokens}
    assert max(train_reads) > 0.6 * info.n_train_tokens  # past the first half

    reads.clear()
    packed = run_single(member)
    assert (
        max(last for size, last in reads if size != info.n_val_tokens) > 0.6 * info.n_train_tokens
    )
    assert relative(packed.final_val_loss, alone.final_val_loss) <= TOLERANCE
    run = MlflowClient(f"sqlite:///{tmp_path}/single/mlflow.db").get_run(alone.run_id)
    assert run.data.params["data.train_part"] == "spread"
