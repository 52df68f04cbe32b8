"""The CUDA kernel's float-format math, compiled for the CPU, against the reference.

float_quant.cu runs the functions of qat/quant/kernels/float_math.cuh on each group of a row;
tests/quant/float_kernel_harness.cpp runs the same functions row by row on the CPU (built here
with the system C++ compiler), fed with op.format_params, so the arithmetic that the GPU test
checks on a device is checked on every machine too. Quantized values and dL/dw compare bit for
bit; the scale gradient too where each row has a single term (float_cases.one_hot_rows), and
within fp32 summation tolerance with a dense upstream gradient.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor

from qat.quant import FLOAT_FORMATS, reference_fake_quant
from qat.quant.formats import QuantFormat
from qat.quant.kernels.op import family_code, format_params
from tests.quant import float_cases

HERE = Path(__file__).resolve().parent
KERNELS = HERE.parents[1] / "qat" / "quant" / "kernels"
COMPILER = shutil.which("c++") or shutil.which("g++")


@pytest.fixture(scope="module")
def harness(tmp_path_factory) -> ctypes.CDLL:
    if COMPILER is None:
        pytest.skip("no C++ compiler (c++ or g++) on PATH")
    library = tmp_path_factory.mktemp("harness") / "float_kernel_harness.so"
    subprocess.run(
        [
            COMPILER,
            "-std=c++17",
            "-O2",
            "-ffp-contract=off",  # one rounding per operation, as the device intrinsics
            "-Wno-unknown-pragmas",  # the kernels' #pragma unroll
            "-fPIC",
            "-shared",
            f"-I{KERNELS}",
            str(HERE / "float_kernel_harness.cpp"),
            "-o",
            str(library),
        ],
        check=True,
    )
    return ctypes.CDLL(str(library))


def _ptr(array: np.ndarray) -> ctypes.c_void_p:
    return ctypes.c_void_p(array.ctypes.data)


def harness_run(
    lib: ctypes.CDLL, w: Tensor, alpha: Tensor, g: Tensor, fmt: QuantFormat
) -> tuple[Tensor, Tensor, Tensor]:
    """(ŵ, dL/dw, dL/dα) from the harness."""
    wn = np.ascontiguousarray(w.numpy(), dtype=np.float32)
    an = np.ascontiguousarray(alpha.reshape(-1).numpy(), dtype=np.float32)
    gn = np.ascontiguousarray(g.numpy(), dtype=np.float32)
    params = np.array(format_params(fmt), dtype=np.float64)
    rows, cols = wn.shape
    out, grad_w = np.empty_like(wn), np.empty_like(wn)
    grad_alpha = np.empty(rows, dtype=np.float32)
    kind = ctypes.c_int64(family_code(fmt))
    shape = (ctypes.c_int64(rows), ctypes.c_int64(cols))
    assert lib.harness_forward(kind, _ptr(wn), _ptr(an), *shape, _ptr(params), _ptr(out)) == 0
    assert (
        lib.harness_backward(
            kind, _ptr(gn), _ptr(wn), _ptr(an), *shape, _ptr(params), _ptr(grad_w), _ptr(grad_alpha)
        )
        == 0
    )
    return torch.from_numpy(out), torch.from_numpy(grad_w), torch.from_numpy(grad_alpha)[:, None]


def reference_run(
    w: Tensor, alpha: Tensor, g: Tensor, fmt: QuantFormat
) -> tuple[Tensor, Tensor, Tensor]:
    wr, ar = w.clone().requires_grad_(), alpha.clone().requires_grad_()
    out = reference_fake_quant(wr, ar, fmt)
    grad_w, grad_alpha = torch.autograd.grad(out, (wr, ar), g)
    return out.detach(), grad_w, grad_alpha


@pytest.mark.parametrize("name", FLOAT_FORMATS)
def test_kernel_math_matches_the_reference_bit_for_bit(harness, name):
    fmt = FLOAT_FORMATS[name]
    for case, w, alpha in float_cases.cases(fmt):
        g = float_cases.upstream(w, seed=len(case))
        out, grad_w, grad_alpha = harness_run(harness, w, alpha, g, fmt)
        ref_out, ref_grad_w, ref_grad_alpha = reference_run(w, alpha, g, fmt)
        float_cases.assert_bitwise(out, ref_out, f"{name}, {case}: ŵ")
        float_cases.assert_bitwise(grad_w, ref_grad_w, f"{name}, {case}: dL/dw")
        torch.testing.assert_close(
            grad_alpha, ref_grad_alpha, rtol=1e-4, atol=1e-6, msg=f"{name}, {case}: dL/dα"
        )


@pytest.mark.parametrize("name", FLOAT_FORMATS)
def test_each_weights_scale_gradient_term_matches_bit_for_bit(harness, name):
    fmt = FLOAT_FORMATS[name]
    for case, w, alpha in float_cases.cases(fmt):
        w1, alpha1, g1 = float_cases.one_hot_rows(w, alpha)
        _, _, grad_alpha = harness_run(harness, w1, alpha1, g1, fmt)
        _, _, ref_grad_alpha = reference_run(w1, alpha1, g1, fmt)
        float_cases.assert_one_term_rows_equal(grad_alpha, ref_grad_alpha, f"{name}, {case}")
