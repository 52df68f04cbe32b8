"""The extension's cache, without a GPU: any edit to a compiled source or header rebuilds, and a
build already in the cache is imported without nvcc."""

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


def test_a_cached_build_is_imported_without_nvcc(tmp_path, monkeypatch):
    monkeypatch.setenv("QAT_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0a")
    monkeypatch.setattr(build, "find_nvcc", lambda: None)
    seen = []
    cached = object()

    def load_cached(directory: Path, name: str):
        seen.append((directory, name))
        return cached

    monkeypatch.setattr(build, "load_cached", load_cached)
    assert build._build() is cached
    key = build.build_key()
    assert seen == [(tmp_path / key, f"qat_fake_quant_{key[:16]}")]


def test_without_a_cached_build_nvcc_is_needed(tmp_path, monkeypatch):
    monkeypatch.setenv("QAT_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0a")
    monkeypatch.setattr(build, "find_nvcc", lambda: None)
    with pytest.raises(build.KernelBuildError, match="needs nvcc"):
        build._build()


def test_a_missing_or_broken_library_is_not_imported(tmp_path):
    assert build.load_cached(tmp_path, "qat_fake_quant_x") is None
    # a link cut short: not an ELF file
    (tmp_path / "qat_fake_quant_x.so").write_bytes(b"\x7fELF truncated")
    assert build.load_cached(tmp_path, "qat_fake_quant_x") is None
