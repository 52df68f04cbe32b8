"""The backend registry behind fake_quant."""

import pytest
import torch

from qat.quant import (
    FLOAT_FORMATS,
    QuantConfigError,
    fake_quant,
    format_for_bits,
    init_scale,
    known_kernels,
    ops,
    reference_fake_quant,
    register_backend,
    resolve_kernel,
)

FMT = format_for_bits(4)


@pytest.fixture(autouse=True)
def isolated_registry(monkeypatch):
    """Each test registers into its own copy, so no fake backend leaks into other tests."""
    monkeypatch.setattr(ops, "_BACKENDS", dict(ops._BACKENDS))


def operands():
    w = torch.randn(3, 5)
    return w, init_scale(w, FMT)


def test_auto_is_reference_without_cuda_backend():
    assert resolve_kernel("auto", "cpu") == "reference"
    assert resolve_kernel("reference", torch.device("cpu")) == "reference"
    w, a = operands()
    assert torch.equal(fake_quant(w, a, FMT), reference_fake_quant(w, a, FMT))


def test_auto_picks_an_available_cuda_backend():
    calls = []

    def fake_cuda(w, scale, fmt):
        calls.append(fmt.name)
        return reference_fake_quant(w, scale, fmt)

    register_backend("cuda", fake_cuda, available=lambda w: w.dtype == torch.float32)
    w, a = operands()
    assert resolve_kernel("auto", w) == "cuda"
    fake_quant(w, a, FMT)
    assert calls == ["int4"]
    # Unavailable for this tensor: auto falls back, an explicit request fails.
    assert resolve_kernel("auto", w.double()) == "reference"
    with pytest.raises(QuantConfigError, match=r"kernel='cuda' is not available for a torch\.f"):
        fake_quant(w.double(), a, FMT, kernel="cuda")


def test_float_formats_take_an_available_cuda_backend_as_integer_formats_do():
    calls = []

    def fake_cuda(w, scale, fmt):
        calls.append(fmt.name)
        return reference_fake_quant(w, scale, fmt)

    register_backend("cuda", fake_cuda, available=lambda w: w.dtype == torch.float32)
    w = torch.randn(3, 40)
    for name in FLOAT_FORMATS:
        fmt = FLOAT_FORMATS[name]
        fake_quant(w, init_scale(w, fmt), fmt)  # auto
        fake_quant(w, init_scale(w, fmt), fmt, kernel="cuda")
        fake_quant(w, init_scale(w, fmt), fmt, kernel="reference")
        fake_quant(w.double(), init_scale(w, fmt).double(), fmt)  # auto, unavailable: reference
    assert calls == [name for name in FLOAT_FORMATS for _ in range(2)]


def test_cuda_not_registered(monkeypatch):
    monkeypatch.delitem(ops._BACKENDS, "cuda", raising=False)  # registered on CUDA builds
    w, a = operands()
    with pytest.raises(QuantConfigError, match="kernel='cuda' is not available: no 'cuda' backend"):
        fake_quant(w, a, FMT, kernel="cuda")


def test_cuda_backend_unavailable_on_cpu():
    register_backend("cuda", reference_fake_quant, available=lambda w: w.is_cuda)
    assert resolve_kernel("auto", "cpu") == "reference"
    with pytest.raises(QuantConfigError, match=r"not available for a torch\.float32 tensor on cpu"):
        resolve_kernel("cuda", "cpu")


def test_unknown_kernel_lists_allowed():
    with pytest.raises(QuantConfigError, match=r"kernel='triton' is unknown; allowed: auto, refer"):
        resolve_kernel("triton", "cpu")
    register_backend("triton", reference_fake_quant, available=lambda w: True)
    assert "triton" in known_kernels()
    assert resolve_kernel("triton", "cpu") == "triton"


@pytest.mark.parametrize("name", ["auto", "reference", ""])
def test_reserved_backend_names(name):
    with pytest.raises(QuantConfigError, match="is not allowed"):
        register_backend(name, reference_fake_quant, available=lambda w: True)


def test_backend_needs_callables():
    with pytest.raises(QuantConfigError, match="callables"):
        register_backend("cuda", None, available=lambda w: True)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_unusable_device():
    with pytest.raises(QuantConfigError, match="device='cuda' is not usable here"):
        resolve_kernel("auto", "cuda")


def test_operand_checks():
    w, a = operands()
    with pytest.raises(ValueError, match=r"scale must have shape \(3, 1\)"):
        fake_quant(w, a.squeeze(1), FMT)
    with pytest.raises(ValueError, match="2-D float tensor"):
        fake_quant(w.flatten(), a, FMT)
    with pytest.raises(ValueError, match="2-D float tensor"):
        fake_quant(w.long(), a, FMT)
    with pytest.raises(QuantConfigError, match="is not a QuantFormat"):
        fake_quant(w, a, 4)
