"""Build the fake-quant CUDA extension on first use, into a cache keyed by what changes the binary.

The key holds a hash of the sources, the GPU architectures built for and the torch and CUDA
versions, so an edit, another GPU or another torch gets its own build and an unchanged one is
only loaded. Nothing here runs at import: torch.utils.cpp_extension (slow to import) and nvcc are
run only when the first CUDA tensor goes through the kernel.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor

SOURCES = ("binding.cpp", "fake_quant.cu", "float_quant.cu")
# Included by the .cu files: part of the key, not compiled alone.
HEADERS = ("division.cuh", "storage.cuh", "float_math.cuh", "float_quant.h")
_HERE = Path(__file__).resolve().parent


class FakeQuantExtension(Protocol):
    """The compiled module's functions (binding.cpp); cpp_extension.load returns it untyped."""

    def forward(self, w: Tensor, scale: Tensor, family: int, params: list[float]) -> Tensor: ...

    def backward(
        self, grad: Tensor, w: Tensor, scale: Tensor, family: int, params: list[float]
    ) -> tuple[Tensor, Tensor]: ...


_extension: FakeQuantExtension | None = None


class KernelBuildError(RuntimeError):
    """The CUDA extension cannot be built or loaded here."""


def find_nvcc() -> str | None:
    """nvcc where torch.utils.cpp_extension looks for it: $CUDA_HOME, $CUDA_PATH, PATH, then
    /usr/local/cuda. Searched here because importing cpp_extension is slow."""
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home is None:
        on_path = shutil.which("nvcc")
        if on_path is not None:
            return on_path
        home = "/usr/local/cuda"
    path = Path(home) / "bin" / "nvcc"
    return str(path) if path.is_file() else None


def cache_root() -> Path:
    """$QAT_KERNEL_CACHE, else qat/ under $TORCH_EXTENSIONS_DIR or ~/.cache/torch_extensions."""
    explicit = os.environ.get("QAT_KERNEL_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("TORCH_EXTENSIONS_DIR") or Path.home() / ".cache" / "torch_extensions"
    return Path(base) / "qat"


def _arch_tag() -> str:
    # cpp_extension builds for $TORCH_CUDA_ARCH_LIST if set, else for the visible GPUs.
    listed = os.environ.get("TORCH_CUDA_ARCH_LIST")
    if listed:
        return listed
    caps = {torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())}
    return "+".join(f"sm{major}{minor}" for major, minor in sorted(caps))


def build_key() -> str:
    """Source hash, architectures, torch and CUDA versions, safe as a folder name."""
    digest = hashlib.sha256()
    for name in SOURCES + HEADERS:
        digest.update(name.encode())
        digest.update((_HERE / name).read_bytes())
    key = f"{digest.hexdigest()[:16]}-{_arch_tag()}-torch{torch.__version__}-cu{torch.version.cuda}"
    return re.sub(r"[^A-Za-z0-9._+-]", "_", key)


def _build() -> FakeQuantExtension:
    if find_nvcc() is None:
        raise KernelBuildError(
            "kernel='cuda' needs nvcc to build its extension and none was found "
            "(set CUDA_HOME or put nvcc on PATH); use kernel='reference'"
        )
    from torch.utils import cpp_extension

    key = build_key()
    directory = cache_root() / key
    directory.mkdir(parents=True, exist_ok=True)
    try:
        return cpp_extension.load(
            # The hash in the name keeps two builds from clashing in one process.
            name=f"qat_fake_quant_{key[:16]}",
            sources=[str(_HERE / name) for name in SOURCES],
            build_directory=str(directory),
            extra_cflags=["-O3"],
            extra_cuda_cflags=["-O3"],
        )
    except (RuntimeError, OSError, ImportError) as err:
        raise KernelBuildError(
            f"building the fake-quant CUDA extension in {directory} failed "
            f"({type(err).__name__}; compiler output above); use kernel='reference'"
        ) from err


def extension() -> FakeQuantExtension:
    """The compiled extension, built (or loaded from the cache) on the first call."""
    global _extension
    if _extension is None:
        _extension = _build()
    return _extension
