"""The CUDA kernel for the float formats (minifloats, MXFP4, NVFP4) against the reference on the
same GPU: ŵ and dL/dw bit for bit, dL/dα bit for bit where a row has a single term and within
fp32 summation tolerance otherwise. Every failure names the format, dtype and case, and where
the first difference is (float_cases.first_difference).
"""

from __future__ import annotations

import pytest
import torch

from qat.quant import FLOAT_FORMATS, fake_quant
from qat.quant.formats import QuantFormat
from tests.quant import float_cases

pytestmark = pytest.mark.gpu  # deselected without CUDA (tests/conftest.py)

DTYPES = (torch.float32, torch.bfloat16)


def run(kernel, w, alpha, g, fmt):
    wr = w.detach().requires_grad_()
    ar = alpha.detach().requires_grad_()
    out = fake_quant(wr, ar, fmt, kernel)
    grad_w, grad_alpha = torch.autograd.grad(out, (wr, ar), g)
    return out.detach(), grad_w, grad_alpha


def on_gpu(w, alpha, g, dtype):
    return w.to("cuda", dtype), alpha.to("cuda"), g.to("cuda", dtype)


def assert_matches(w, alpha, g, fmt: QuantFormat, what: str) -> None:
    out, grad_w, grad_alpha = run("cuda", w, alpha, g, fmt)
    ref_out, ref_grad_w, ref_grad_alpha = run("reference", w, alpha, g, fmt)
    float_cases.assert_bitwise(out, ref_out, f"{what}: ŵ")
    float_cases.assert_bitwise(grad_w, ref_grad_w, f"{what}: dL/dw")
    assert grad_alpha.dtype == alpha.dtype and grad_alpha.shape == alpha.shape, what
    # A different fp32 summation order moves the row sums in the last places.
    torch.testing.assert_close(
        grad_alpha, ref_grad_alpha, rtol=1e-4, atol=1e-6, msg=lambda m: f"{what}: dL/dα: {m}"
    )


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", FLOAT_FORMATS)
def test_matches_the_reference_bit_for_bit(name, dtype):
    """Random rows with zeros, subnormals and clipped weights at shapes that end on short
    blocks, exact rounding ties, values over max, tiny and all-zero weights, clamped scales."""
    fmt = FLOAT_FORMATS[name]
    for case, w, alpha in float_cases.cases(fmt):
        g = float_cases.upstream(w, seed=len(case))
        assert_matches(*on_gpu(w, alpha, g, dtype), fmt, f"{name}, {dtype}, {case}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", FLOAT_FORMATS)
def test_each_weights_scale_gradient_term_matches_bit_for_bit(name, dtype):
    fmt = FLOAT_FORMATS[name]
    for case, w, alpha in float_cases.cases(fmt):
        w1, alpha1, g1 = on_gpu(*float_cases.one_hot_rows(w, alpha), dtype)
        _, _, grad_alpha = run("cuda", w1, alpha1, g1, fmt)
        _, _, ref_grad_alpha = run("reference", w1, alpha1, g1, fmt)
        float_cases.assert_one_term_rows_equal(
            grad_alpha, ref_grad_alpha, f"{name}, {dtype}, {case}"
        )


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", FLOAT_FORMATS)
def test_unaligned_and_strided_weights_take_the_element_path(name, dtype):
    """Whole blocks, but no 16-byte loads possible (the element-by-element path), and
    non-contiguous weights (made contiguous by the op)."""
    fmt = FLOAT_FORMATS[name]
    w, alpha = float_cases.random_case((48, 128), fmt, seed=3)
    w, alpha, g = on_gpu(w, alpha, float_cases.upstream(w, seed=4), dtype)
    shifted = torch.empty(w.numel() + 1, device="cuda", dtype=dtype)[1:].view(w.shape)
    assert_matches(shifted.copy_(w), alpha, g, fmt, f"{name}, {dtype}, unaligned")
    assert_matches(w.t().contiguous().t(), alpha, g, fmt, f"{name}, {dtype}, column-major")
    assert_matches(w[:, 1:97], alpha, g[:, 1:97], fmt, f"{name}, {dtype}, strided rows")


@pytest.mark.parametrize("name", FLOAT_FORMATS)
def test_a_large_weight_and_a_bf16_scale(name):
    fmt = FLOAT_FORMATS[name]
    w, alpha = float_cases.random_case((1024, 4096), fmt, seed=9)
    w, alpha, g = on_gpu(w, alpha, float_cases.upstream(w, seed=10), torch.bfloat16)
    assert_matches(w, alpha, g, fmt, f"{name}, 1024x4096 bf16")
    out, grad_w, grad_alpha = run("cuda", w, alpha.bfloat16(), g, fmt)
    ref = run("reference", w, alpha.bfloat16(), g, fmt)
    float_cases.assert_bitwise(out, ref[0], f"{name}, bf16 scale: ŵ")
    float_cases.assert_bitwise(grad_w, ref[1], f"{name}, bf16 scale: dL/dw")
    assert grad_alpha.dtype == torch.bfloat16
    torch.testing.assert_close(grad_alpha, ref[2], rtol=1e-2, atol=1e-6)


@pytest.mark.parametrize("name", ("mxfp4", "nvfp4"))
def test_deterministic_scale_gradient(name):
    fmt = FLOAT_FORMATS[name]
    w, alpha = float_cases.random_case((512, 4096), fmt, seed=12)
    w, alpha, g = on_gpu(w, alpha, float_cases.upstream(w, seed=13), torch.bfloat16)
    first, second = run("cuda", w, alpha, g, fmt), run("cuda", w, alpha, g, fmt)
    assert torch.equal(first[2], second[2])


@pytest.mark.parametrize("name", FLOAT_FORMATS)
def test_auto_takes_the_kernel_for_a_float_format_on_a_gpu(name, monkeypatch):
    """auto calls the CUDA backend for a float format, and its ŵ is the reference's bit for bit."""
    from qat.quant import ops

    calls = []
    cuda = ops._BACKENDS["cuda"]

    def counted(w, scale, fmt):
        calls.append(fmt.name)
        return cuda.fn(w, scale, fmt)

    monkeypatch.setattr(ops, "_BACKENDS", dict(ops._BACKENDS))
    ops.register_backend("cuda", counted, cuda.available)
    fmt = FLOAT_FORMATS[name]
    w, alpha = float_cases.random_case((8, 64), fmt, seed=14)
    w, alpha = w.cuda(), alpha.cuda()
    auto = fake_quant(w, alpha, fmt)
    assert calls == [fmt.name]
    float_cases.assert_bitwise(auto, fake_quant(w, alpha, fmt, "reference"), "auto vs reference")


@pytest.mark.parametrize("name", FLOAT_FORMATS)
def test_opcheck(name):
    """Schema, fake impl, autograd registration and AOT dispatch of both ops, float codes."""
    from qat.quant.kernels.op import family_code, format_params

    fmt = FLOAT_FORMATS[name]
    w, alpha = float_cases.random_case((24, 40), fmt, seed=15)
    w, alpha, g = on_gpu(w, alpha, float_cases.upstream(w, seed=16), torch.float32)
    args = (family_code(fmt), format_params(fmt))
    w_req, alpha_req = w.clone().requires_grad_(), alpha.clone().requires_grad_()
    torch.library.opcheck(torch.ops.qat.fake_quant_fwd.default, (w_req, alpha_req, *args))
    torch.library.opcheck(torch.ops.qat.fake_quant_bwd.default, (g, w, alpha, *args))


@pytest.mark.parametrize("name", ("fp8_e4m3", "nvfp4"))
def test_compiled_op_is_one_graph_and_bitwise_equal(name):
    torch._dynamo.reset()
    fmt = FLOAT_FORMATS[name]
    compiled = torch.compile(lambda w, a: fake_quant(w, a, fmt, "cuda"), fullgraph=True)
    w, alpha = float_cases.random_case((96, 200), fmt, seed=17)
    w, alpha, g = on_gpu(w, alpha, float_cases.upstream(w, seed=18), torch.float32)
    wr, ar = w.clone().requires_grad_(), alpha.clone().requires_grad_()
    out = compiled(wr, ar)
    grads = torch.autograd.grad(out, (wr, ar), g)
    eager = run("cuda", w, alpha, g, fmt)
    assert torch.equal(out, eager[0]) and torch.equal(grads[0], eager[1])
    assert torch.equal(grads[1], eager[2])


@pytest.mark.parametrize("name", FLOAT_FORMATS)
def test_the_reference_replays_from_a_cuda_graph(name):
    """bench/fake_quant.py times every path as a captured CUDA graph: the reference must copy
    nothing from the host while captured (NVFP4's per-tensor scale once did)."""
    fmt = FLOAT_FORMATS[name]
    w, alpha = float_cases.random_case((64, 256), fmt, seed=18)
    w, alpha = w.to("cuda", torch.bfloat16), alpha.cuda()
    eager = fake_quant(w, alpha, fmt, "reference")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # a warm-up off the default stream, as capture wants
        fake_quant(w, alpha, fmt, "reference")
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = fake_quant(w, alpha, fmt, "reference")
    graph.replay()
    torch.cuda.synchronize()
    float_cases.assert_bitwise(captured, eager, f"{name}: graph replay vs eager")
