"""The reference backend on CUDA agrees with CPU (run on a GPU machine)."""

import pytest
import torch
from torch import nn

from qat.quant import QuantLinear, format_for_bits, init_scale, reference_fake_quant, resolve_kernel

pytestmark = pytest.mark.gpu  # deselected without CUDA (tests/conftest.py)


@pytest.mark.parametrize("bits", [1, 1.58, 2, 3, 4, 6, 8])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_matches_cpu(bits, dtype):
    fmt = format_for_bits(bits)
    torch.manual_seed(0)
    w = torch.randn(64, 96).to(dtype)
    alpha = init_scale(w, fmt) * 0.7  # some weights clipped
    g = torch.randn(64, 96).to(dtype)
    results = []
    for device in ("cpu", "cuda"):
        wd = w.to(device).detach().requires_grad_()
        ad = alpha.to(device).detach().requires_grad_()
        out = reference_fake_quant(wd, ad, fmt)
        out.backward(g.to(device))
        results.append([t.detach().cpu() for t in (out, wd.grad, ad.grad)])
    (out_cpu, gw_cpu, ga_cpu), (out_gpu, gw_gpu, ga_gpu) = results
    assert torch.equal(out_cpu, out_gpu) and torch.equal(gw_cpu, gw_gpu)
    torch.testing.assert_close(ga_cpu, ga_gpu, rtol=1e-4, atol=1e-6)


def test_quant_linear_under_cuda_autocast():
    assert resolve_kernel("auto", "cuda") in ("cuda", "reference")  # cuda when nvcc is found
    q = QuantLinear.from_linear(nn.Linear(32, 16).cuda(), 4)
    assert q.scale.is_cuda
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = q(torch.randn(8, 32, device="cuda"))
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert q.weight.grad.dtype == torch.float32 and q.scale.grad.dtype == torch.float32
