"""Build the fake-quant CUDA extension on first use, into a cache keyed by what changes the binary.

The key holds a hash of the sources, the GPU architectures built for and the torch and CUDA
versions, so an edit, another GPU or another torch gets its own build and an unchanged one is
only imported (from a cache carried to a fresh checkout too, even where nvcc is missing).
Nothing here runs at import: torch.utils.cpp_extension (slow to import) and nvcc are run only
when the first CUDA tensor goes through the kernel.
"""

from __future__ import annotations

import hashlib
import importlib.util
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


def _extension_name(key: str) -> str:
    # The hash in the name keeps two builds from clashing in one process.
    return f"qat_fake_quant_{key[:16]}"


def load_cached(directory: Path, name: str) -> FakeQuantExtension | None:
    """The extension already built in ``directory``, imported without nvcc or ninja; None if
    there is none or it does not load (a link cut short), and cpp_extension.load takes over as
    it would without a cache (where it cannot load it either: KernelBuildError, one line).

    cpp_extension.load would also load it, but only after ninja has compared timestamps, and a
    fresh checkout (a new clone on a cluster, a copy on a lent machine) makes every source look
    newer than the build: the key already says the sources are the same."""
    library = directory / f"{name}.so"
    if not library.is_file():
        return None
    spec = importlib.util.spec_from_file_location(name, library)
    if spec is None or spec.loader is None:
        return None
    try:  # an extension module is opened (dlopen) when created
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except ImportError:
        return None
    return module


def _build() -> FakeQuantExtension:
    key = build_key()
    directory = cache_root() / key
    cached = load_cached(directory, _extension_name(key))
    if cached is not None:
        return cached
    if find_nvcc() is None:
        raise KernelBuildError(
            "kernel='cuda' needs nvcc to build its extension and none was found "
            "(set CUDA_HOME or put nvcc on PATH); use kernel='reference'"
        )
    from torch.utils import cpp_extension

    directory.mkdir(parents=True, exist_ok=True)
    try:
        return cpp_extension.load(
            name=_extension_name(key),
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
