"""The extension's cache key, without a GPU: any edit to a compiled source or header rebuilds."""

import fnmatch
import shutil
import tomllib
from pathlib import Path

import pytest

from qat.quant.kernels import build


@pytest.mark.parametrize("name", build.SOURCES + build.HEADERS)
def test_editing_any_kernel_file_changes_the_build_key(name, tmp_path, monkeypatch):
    for file in build.SOURCES + build.HEADERS:
        shutil.copy(build._HERE / file, tmp_path / file)
    monkeypatch.setattr(build, "_HERE", tmp_path)
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0a")
    before = build.build_key()
    with (tmp_path / name).open("a") as file:
        file.write("\n// edited\n")
    assert build.build_key() != before


def test_every_kernel_file_ships_with_the_package():
    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["qat.quant.kernels"]
    for name in build.SOURCES + build.HEADERS:
        assert any(fnmatch.fnmatch(name, pattern) for pattern in patterns), name
