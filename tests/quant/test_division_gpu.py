"""divide() and make_divisor() of qat/quant/kernels/division.cuh, compiled into a test-only
extension: the reciprocal is RN(1/α) for every float of the fast range, and the quotient is the
IEEE one for every dividend where fake quantization depends on it.

References are computed in float64 and rounded once to float32. For float operands that double
rounding is exact: neither 1/α nor w/α can fall within 2^-49 (relative) of a float32 midpoint
without being one, and neither can be a midpoint.
"""

import hashlib

import pytest
import torch

from qat.quant.kernels import build

pytestmark = pytest.mark.gpu  # deselected without CUDA (tests/conftest.py)

DECLARATIONS = """
torch::Tensor inverse(torch::Tensor alpha);
torch::Tensor quotient(torch::Tensor x, torch::Tensor alpha);
"""

KERNELS = r"""
#include <torch/extension.h>
#include <c10/cuda/CUDAStream.h>
#include "division.cuh"

namespace {
__global__ void inverse_kernel(const float* alpha, float* out, int64_t n) {
  const int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  if (i < n) out[i] = qat_fake_quant::make_divisor(alpha[i]).inverse;
}

__global__ void quotient_kernel(const float* x, const float* alpha, float* out, int64_t n) {
  const int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  if (i < n) out[i] = qat_fake_quant::divide(x[i], qat_fake_quant::make_divisor(alpha[i]));
}

unsigned blocks(int64_t n) { return static_cast<unsigned>((n + 255) / 256); }
}  // namespace

torch::Tensor inverse(torch::Tensor alpha) {
  auto out = torch::empty_like(alpha);
  inverse_kernel<<<blocks(alpha.numel()), 256, 0, c10::cuda::getCurrentCUDAStream()>>>(
      alpha.data_ptr<float>(), out.data_ptr<float>(), alpha.numel());
  return out;
}

torch::Tensor quotient(torch::Tensor x, torch::Tensor alpha) {
  auto out = torch::empty_like(x);
  quotient_kernel<<<blocks(x.numel()), 256, 0, c10::cuda::getCurrentCUDAStream()>>>(
      x.data_ptr<float>(), alpha.data_ptr<float>(), out.data_ptr<float>(), x.numel());
  return out;
}
"""

FAST_RANGE = (-17, 20)  # make_divisor's fast range is 2^-17 <= α <= 2^20


@pytest.fixture(scope="module")
def division():
    from torch.utils import cpp_extension

    header = (build._HERE / "division.cuh").read_bytes()
    digest = hashlib.sha256(header + KERNELS.encode()).hexdigest()[:12]
    directory = build.cache_root() / f"division-test-{digest}"
    directory.mkdir(parents=True, exist_ok=True)
    return cpp_extension.load_inline(
        name=f"qat_division_test_{digest}",
        cpp_sources=DECLARATIONS,
        cuda_sources=KERNELS,
        functions=["inverse", "quotient"],
        extra_include_paths=[str(build._HERE)],
        extra_cuda_cflags=["-O3"],
        build_directory=str(directory),
    )


def floats_of_binade(exponent: int) -> torch.Tensor:
    """Every float32 in [2^exponent, 2^(exponent+1))."""
    significands = torch.arange(2**23, dtype=torch.int32, device="cuda")
    return (significands | ((exponent + 127) << 23)).view(torch.float32)


def test_inverse_is_the_correctly_rounded_reciprocal_of_every_fast_divisor(division):
    low, high = FAST_RANGE
    for exponent in range(low, high):
        alpha = floats_of_binade(exponent)
        want = (1.0 / alpha.double()).float()
        assert torch.equal(division.inverse(alpha), want), f"binade 2^{exponent}"
    top = torch.tensor([2.0**high], device="cuda")
    assert torch.equal(division.inverse(top), (1.0 / top.double()).float())


def random_floats(n: int, exponents: tuple[int, int], gen: torch.Generator) -> torch.Tensor:
    """n floats of random sign and significand with exponents in [low, high)."""
    significands = torch.randint(0, 2**23, (n,), device="cuda", generator=gen, dtype=torch.int32)
    exponent = torch.randint(*exponents, (n,), device="cuda", generator=gen, dtype=torch.int32)
    sign = torch.randint(0, 2, (n,), device="cuda", generator=gen, dtype=torch.int32) << 31
    return (sign | ((exponent + 127) << 23) | significands).view(torch.float32)


def test_divide_is_the_ieee_quotient_for_dividends_from_2_pow_minus_60_to_2_pow_61(division):
    gen = torch.Generator(device="cuda").manual_seed(0)
    n = 2**24
    x = random_floats(n, (-60, 61), gen)
    alpha = random_floats(n, FAST_RANGE, gen).abs()
    want = (x.double() / alpha.double()).float()
    assert torch.equal(division.quotient(x, alpha), want)


def test_divide_outside_that_range_is_exact_or_far_from_any_rounding_decision(division):
    """Zero, subnormal, tiny, huge and infinite dividends: the first estimate x·RN(1/α), exact for
    0 and ±inf, within an ulp or two elsewhere (and there |x/α| < 2^-43 or > 2^40)."""
    gen = torch.Generator(device="cuda").manual_seed(1)
    n = 2**20
    tiny = random_floats(n, (-126, -60), gen)
    huge = random_floats(n, (61, 100), gen)  # quotients below the overflow threshold
    subnormal = (torch.randint(1, 2**23, (n,), device="cuda", generator=gen)).to(torch.int32)
    specials = torch.tensor([0.0, -0.0, torch.inf, -torch.inf], device="cuda")
    x = torch.cat([tiny, huge, subnormal.view(torch.float32), specials])
    alpha = random_floats(x.numel(), FAST_RANGE, gen).abs()
    got = division.quotient(x, alpha)
    want = (x.double() / alpha.double()).float()
    exact = (x == 0) | x.isinf()
    assert torch.equal(got[exact], want[exact])
    assert torch.equal(got[exact].signbit(), want[exact].signbit())  # -0.0 stays -0.0
    # x·RN(1/α) is off by at most 2^-24 relative before its rounding, and both round by half
    # an ulp (2^-150 at most where the quotient is subnormal).
    slack = 2.0**-22 * want.double().abs() + 2.0**-149
    assert ((got.double() - want.double()).abs() <= slack)[~exact].all()
    # The premise that makes that slack harmless: these quotients are far from any level.
    assert ((want.abs() < 2.0**-43) | (want.abs() > 2.0**40) | exact).all()
