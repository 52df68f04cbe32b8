"""Session fixtures shared by the integration and SLURM tests, and the `gpu` marker's rule."""

from __future__ import annotations

from pathlib import Path

import pytest

VOCAB = 2048  # the smoke grid's vocabulary: fast on CPU


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Without CUDA, tests marked `gpu` are deselected (not collected as skips)."""
    import torch

    if torch.cuda.is_available():
        return
    gpu = [item for item in items if item.get_closest_marker("gpu") is not None]
    if gpu:
        config.hook.pytest_deselected(items=gpu)
        items[:] = [item for item in items if item.get_closest_marker("gpu") is None]


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    """The bundled corpus, prepared once per session (point $QAT_DATA_DIR here)."""
    from qat.data import prepare

    root = tmp_path_factory.mktemp("data")
    prepare("bundled", root / f"bundled-v{VOCAB}", vocab_size=VOCAB)
    return root


@pytest.fixture(scope="session")
def val_entropy(data_root) -> float:
    """Unigram entropy (nats/token) of the validation shard: the baseline to beat."""
    from qat.data import DatasetInfo, unigram_entropy

    return unigram_entropy(DatasetInfo.load(data_root / f"bundled-v{VOCAB}").val_path)
