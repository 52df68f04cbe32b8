"""The CUDA fake-quant kernel against the reference: values, gradients, torch.compile, build errors.

Quantized values and weight gradients must be bitwise equal to the reference; the scale
gradient is a row sum, so it may differ by fp32 reduction order only.
"""

import pytest
import torch
from torch import nn

from qat.quant import (
    QuantLinear,
    fake_quant,
    format_for_bits,
    init_scale,
    quantize_model,
    resolve_kernel,
)
from qat.quant.formats import grad_scale

pytestmark = pytest.mark.gpu  # deselected without CUDA (tests/conftest.py)

BITS = (1, 1.58, 2, 3, 4, 6, 8)
DTYPES = (torch.float32, torch.bfloat16)
# Odd sizes take the scalar path; multiples of 8 columns the 16-byte vector path, whose forward
# cuts rows into segments of 1,024 (bf16) or 512 (fp32) columns: 2056 and 4100 end on a short one.
SHAPES = (
    (1, 1),
    (3, 7),
    (5, 8),
    (2, 36),
    (33, 1000),
    (9, 2056),
    (7, 4100),
    (17, 4095),
    (4096, 4096),
)


def problem(shape, dtype, fmt, seed):
    """(w, α, g) on the GPU with rows of different magnitudes, some weights clipped, exact zeros
    and negative zeros, and a few scales below the clamp value."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    rows = shape[0]
    w = torch.randn(shape, device="cuda", generator=gen)
    w = w * torch.rand((rows, 1), device="cuda", generator=gen).add(0.1)
    w.view(-1)[::11] = 0.0
    w.view(-1)[5::13] = -0.0
    w = w.to(dtype)
    factor = torch.rand((rows, 1), device="cuda", generator=gen).mul(0.8).add(0.5)
    alpha = init_scale(w, fmt) * factor
    alpha[::5] = 1e-7  # clamped to SCALE_EPS in forward and backward
    g = torch.randn(shape, device="cuda", generator=gen).to(dtype)
    return w, alpha, g


def run(kernel, w, alpha, g, fmt):
    wr = w.detach().requires_grad_()
    ar = alpha.detach().requires_grad_()
    out = fake_quant(wr, ar, fmt, kernel)
    grad_w, grad_alpha = torch.autograd.grad(out, (wr, ar), g)
    return out, grad_w, grad_alpha


def assert_matches(w, alpha, g, fmt):
    out, grad_w, grad_alpha = run("cuda", w, alpha, g, fmt)
    ref_out, ref_grad_w, ref_grad_alpha = run("reference", w, alpha, g, fmt)
    assert out.dtype == w.dtype and grad_w.dtype == w.dtype
    assert grad_alpha.dtype == alpha.dtype and grad_alpha.shape == alpha.shape
    assert torch.equal(out, ref_out)
    assert torch.equal(grad_w, ref_grad_w)
    # A different fp32 summation order can move a bf16 scale gradient by one unit in the last place.
    rtol = 1e-2 if alpha.dtype == torch.bfloat16 else 1e-4
    torch.testing.assert_close(grad_alpha, ref_grad_alpha, rtol=rtol, atol=1e-6)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("bits", BITS)
def test_matches_reference(bits, dtype, shape):
    fmt = format_for_bits(bits)
    assert_matches(*problem(shape, dtype, fmt, seed=hash((bits, shape)) % 2**31), fmt)


@pytest.mark.parametrize("bits", BITS)
def test_rounding_ties_and_clip_edges(bits):
    """u exactly on .5 ties and on the clip bounds, where the rounding mode and < vs <= matter."""
    fmt = format_for_bits(bits)
    u = torch.arange(-40, 41, device="cuda", dtype=torch.float32) / 4  # steps of 1/4
    u = torch.cat([u, torch.tensor([0.99, -0.99, 1.0, -1.0, 7.0, -8.0], device="cuda")])
    alpha = torch.full((3, 1), 0.5, device="cuda")
    w = (u * 0.5).expand(3, -1).contiguous()
    g = torch.randn_like(w)
    assert_matches(w, alpha, g, fmt)


def divisors():
    """Scales for the kernel's w/α (a reciprocal and two FMA corrections, not a division):
    significands all ones, all zeros and in between, across the fast range 2^-17..2^20 and
    outside it (where the kernel divides the whole row by the IEEE division)."""
    significands = torch.tensor([1.0, 1 + 2**-23, 1.5, 1.3333333, 2 - 2**-23, 2 - 2**-22])
    exponents = torch.tensor([-18.0, -17, -9, -1, 0, 3, 12, 20, 21, 40])
    alpha = (significands[:, None] * torch.exp2(exponents)[None, :]).flatten()
    gen = torch.Generator().manual_seed(0)
    random = torch.exp2(torch.empty(200).uniform_(-17, 20, generator=gen))
    return torch.cat([alpha, random]).cuda()[:, None]


@pytest.mark.parametrize("bits", (1.58, 2, 4, 8))
def test_quotients_next_to_rounding_ties_match_the_ieee_division(bits):
    """w/α one or two ulps either side of every .5 tie, where a quotient rounded the wrong way
    flips the quantized level; plus |w| beyond 2^±60 and subnormals, where the kernel keeps
    its first estimate w·RN(1/α)."""
    fmt = format_for_bits(bits)
    alpha = divisors()
    halves = torch.arange(-300, 301, device="cuda", dtype=torch.float32) / 2
    if fmt.family == "seq":  # SEQ rounds u·n − shift: put u near those ties instead
        halves = (halves + fmt.shift) / fmt.n_levels
    ties = alpha * halves
    up, down = torch.full_like(ties, torch.inf), torch.full_like(ties, -torch.inf)
    above = torch.nextafter(ties, up)
    below = torch.nextafter(ties, down)
    neighbours = [ties, above, torch.nextafter(above, up), below, torch.nextafter(below, down)]
    extremes = torch.tensor(
        [2.0**-61, 2.0**-60, 2.0**60, 2.0**61, 1e-40, -1e-41, 3e38], device="cuda"
    )
    w = torch.cat([*neighbours, extremes.expand(alpha.shape[0], -1)], dim=1)
    g = torch.randn_like(w)
    assert_matches(w, alpha, g, fmt)
    assert_matches(w.bfloat16(), alpha, g.bfloat16(), fmt)


def every_bf16_weight():
    """The 65,282 bf16 bit patterns that are not NaN (zeros, subnormals and ±inf included)."""
    patterns = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16)
    w = patterns.view(torch.bfloat16)
    return w[~w.isnan()]


@pytest.mark.parametrize("path", ("vector", "scalar"))
@pytest.mark.parametrize("bits", BITS)
def test_every_bf16_weight_under_every_kind_of_scale(bits, path):
    """Each non-NaN bf16 weight against each scale of divisors(): every weight the kernel can see
    in bf16, so the quantized values and dL/dw are exact for all of them, not for a sample.
    65,282 columns take the element-by-element path; six ones more, the 16-byte vector one."""
    fmt = format_for_bits(bits)
    alpha = divisors()
    w = every_bf16_weight().cuda()
    if path == "vector":
        w = torch.cat([w, torch.ones(6, dtype=w.dtype, device="cuda")])
    w = w.expand(alpha.shape[0], -1).contiguous()
    gen = torch.Generator(device="cuda").manual_seed(7)
    g = torch.randn(w.shape, device="cuda", generator=gen).bfloat16()
    out, grad_w, grad_alpha = run("cuda", w, alpha, g, fmt)
    ref_out, ref_grad_w, ref_grad_alpha = run("reference", w, alpha, g, fmt)
    assert torch.equal(out, ref_out)
    assert torch.equal(grad_w, ref_grad_w)
    # Rows of 65k terms can nearly cancel, so bound the summation-order difference by the sum
    # of the terms' magnitudes (|dq| is at most max(|Qn|, Qp, 1)) rather than by the result.
    dq_max = max(abs(fmt.qn), abs(fmt.qp), 1.0)
    magnitude = g.float().abs().sum(dim=1, keepdim=True) * dq_max * grad_scale(w, fmt)
    assert ((grad_alpha - ref_grad_alpha).abs() <= 1e-5 * magnitude).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_non_contiguous_and_misaligned_views(dtype):
    fmt = format_for_bits(4)
    w, alpha, g = problem((64, 130), dtype, fmt, seed=1)
    assert_matches(w.t().contiguous().t(), alpha, g, fmt)  # column-major weight
    assert_matches(w[:, 1:129], alpha, g[:, 1:129], fmt)  # strided rows
    # Contiguous but starting one element into its storage: no 16-byte loads possible.
    shifted = torch.empty(w.numel() + 1, device="cuda", dtype=dtype)[1:].view(w.shape)
    assert_matches(shifted.copy_(w), alpha, g, fmt)


def test_bf16_scale_gets_a_bf16_gradient():
    fmt = format_for_bits(2)
    w, alpha, g = problem((16, 64), torch.float32, fmt, seed=2)
    assert_matches(w, alpha.bfloat16(), g, fmt)


def test_deterministic_scale_gradient():
    fmt = format_for_bits(4)
    w, alpha, g = problem((512, 4096), torch.bfloat16, fmt, seed=3)
    first, second = run("cuda", w, alpha, g, fmt), run("cuda", w, alpha, g, fmt)
    assert torch.equal(first[2], second[2])


def test_auto_picks_cuda_for_cuda_weights():
    assert resolve_kernel("auto", torch.empty(2, 2, device="cuda")) == "cuda"
    assert resolve_kernel("auto", torch.empty(2, 2, device="cuda").half()) == "reference"
    assert resolve_kernel("auto", torch.empty(2, 2)) == "reference"


@pytest.mark.parametrize("bits", (1, 1.58, 4))
def test_opcheck(bits):
    """Schema, fake impl, autograd registration and AOT dispatch of both custom ops."""
    from qat.quant.kernels.op import FAMILY_CODES, format_params

    fmt = format_for_bits(bits)
    w, alpha, g = problem((24, 40), torch.float32, fmt, seed=4)
    args = (FAMILY_CODES[fmt.family], format_params(fmt))
    w_req, alpha_req = w.requires_grad_(), alpha.requires_grad_()
    torch.library.opcheck(torch.ops.qat.fake_quant_fwd.default, (w_req, alpha_req, *args))
    torch.library.opcheck(
        torch.ops.qat.fake_quant_bwd.default, (g, w.detach(), alpha.detach(), *args)
    )


def test_fake_impl_under_fake_tensors():
    from torch._subclasses.fake_tensor import FakeTensorMode

    fmt = format_for_bits(4)
    with FakeTensorMode():
        w = torch.empty(6, 10, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        alpha = torch.empty(6, 1, device="cuda", requires_grad=True)
        out = fake_quant(w, alpha, fmt, "cuda")
        grad_w, grad_alpha = torch.autograd.grad(out, (w, alpha), torch.empty_like(out))
    assert (out.shape, out.dtype, out.device.type) == ((6, 10), torch.bfloat16, "cuda")
    assert (grad_w.dtype, grad_alpha.shape, grad_alpha.dtype) == (
        torch.bfloat16,
        (6, 1),
        torch.float32,
    )


@pytest.mark.parametrize("bits", (1, 4))
def test_compiled_op_is_one_graph_and_bitwise_equal(bits):
    torch._dynamo.reset()
    fmt = format_for_bits(bits)
    compiled = torch.compile(lambda w, a: fake_quant(w, a, fmt, "cuda"), fullgraph=True)
    w, alpha, g = problem((96, 200), torch.float32, fmt, seed=5)
    wr, ar = w.clone().requires_grad_(), alpha.clone().requires_grad_()
    out = compiled(wr, ar)
    grads = torch.autograd.grad(out, (wr, ar), g)
    ref = run("cuda", w, alpha, g, fmt)
    assert torch.equal(out, ref[0]) and torch.equal(grads[0], ref[1])
    assert torch.equal(grads[1], ref[2])


def test_compiled_quant_model_matches_eager():
    """A small QuantLinear model through the op compiles in one graph and matches eager."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 32)).cuda()
    quantize_model(model, 4, kernel="cuda", exclude=())
    assert all(m.kernel == "cuda" for m in model.modules() if isinstance(m, QuantLinear))
    x = torch.randn(16, 64, device="cuda")

    def step(net):
        net.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y = net(x)
        y.float().square().mean().backward()
        return y, [p.grad.clone() for p in net.parameters()]

    compiled_y, compiled_grads = step(torch.compile(model, fullgraph=True))
    eager_y, eager_grads = step(model)
    # Inductor fuses the bf16 elementwise ops around the matmuls, so roundings may differ.
    for got, want in zip([compiled_y, *compiled_grads], [eager_y, *eager_grads], strict=True):
        assert ((got.float() - want.float()).norm() / want.float().norm()).item() < 1e-2


def test_missing_nvcc_is_one_clear_line(monkeypatch):
    from qat.quant.kernels import KernelBuildError, build

    monkeypatch.setattr(build, "_extension", None)
    monkeypatch.setattr(build, "find_nvcc", lambda: None)
    with pytest.raises(KernelBuildError, match=r"needs nvcc") as info:
        build.extension()
    assert "\n" not in str(info.value)


def test_build_key_names_arch_and_versions(monkeypatch):
    from qat.quant.kernels import build

    key = build.build_key()
    assert torch.__version__.split("+")[0] in key and str(torch.version.cuda) in key
    assert (build.cache_root() / key).is_dir()  # built by the tests above
    # a later process imports that build as it is, without ninja
    cached = build.load_cached(build.cache_root() / key, build._extension_name(key))
    assert cached is not None and callable(cached.forward) and callable(cached.backward)
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.0")
    other = build.build_key()
    assert other != key and other.split("-")[0] == key.split("-")[0]  # same sources
