"""The reference fake quantizer against the spec: levels, idempotence, STE masks, gradients."""

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qat.quant import format_for_bits, init_scale, level_count, reference_fake_quant
from tests.quant import formula

BITS = formula.BITS
FAST = settings(max_examples=40, deadline=None)

# Plain values plus exact ties and clip boundaries, which random floats would rarely hit.
ELEMENTS = st.one_of(
    st.floats(-4, 4, width=32),
    st.sampled_from([0.0, -0.0, 0.5, -0.5, 1.0, -1.0, 0.99, -0.99, 0.25, 1.5, 2.5, -3.5]).map(
        np.float32
    ),
)


@st.composite
def problems(draw, *, grad: bool = False):
    """(w, α, g) with small random shapes; α may fall below the clamp value."""
    rows, cols = draw(st.integers(1, 5)), draw(st.integers(1, 9))
    w = draw(hnp.arrays(np.float32, (rows, cols), elements=ELEMENTS))
    alpha = draw(hnp.arrays(np.float32, (rows, 1), elements=st.floats(2**-20, 4, width=32)))
    g = draw(hnp.arrays(np.float32, (rows, cols), elements=st.floats(-2, 2, width=32)))
    return w, alpha, g


def run(w: np.ndarray, alpha: np.ndarray, g: np.ndarray, bits: float):
    wt = torch.tensor(w, requires_grad=True)
    at = torch.tensor(alpha, requires_grad=True)
    out = reference_fake_quant(wt, at, format_for_bits(bits))
    out.backward(torch.tensor(g))
    return out.detach(), wt.grad, at.grad


def distinct_per_row(t: torch.Tensor) -> list[int]:
    return [len(torch.unique(row)) for row in t]


@pytest.mark.parametrize("bits", BITS)
@FAST
@given(problem=problems())
def test_forward_matches_formula(bits, problem):
    w, alpha, g = problem
    out, _, _ = run(w, alpha, g, bits)
    torch.testing.assert_close(out, torch.tensor(formula.forward(w, alpha, bits)))


@pytest.mark.parametrize("bits", BITS)
@FAST
@given(problem=problems())
def test_ste_weight_gradient_is_masked_passthrough(bits, problem):
    w, alpha, g = problem
    _, grad_w, _ = run(w, alpha, g, bits)
    expected_w, _ = formula.grads(w, alpha, g, bits)
    # Exactly g inside the clip range and exactly 0 outside.
    assert torch.equal(grad_w, torch.tensor(expected_w))


@pytest.mark.parametrize("bits", BITS)
@FAST
@given(problem=problems())
def test_scale_gradient_matches_formula(bits, problem):
    w, alpha, g = problem
    _, _, grad_a = run(w, alpha, g, bits)
    _, expected_a = formula.grads(w, alpha, g, bits)
    assert grad_a.shape == (w.shape[0], 1) and grad_a.dtype == torch.float32
    torch.testing.assert_close(
        grad_a, torch.tensor(expected_a, dtype=torch.float32), rtol=1e-4, atol=1e-5
    )


@pytest.mark.parametrize("bits", BITS)
@FAST
@given(problem=problems())
def test_level_count_per_row(bits, problem):
    w, alpha, _ = problem
    fmt = format_for_bits(bits)
    out = reference_fake_quant(torch.tensor(w), torch.tensor(alpha), fmt)
    counts = distinct_per_row(out)
    assert max(counts) <= level_count(fmt)
    if bits == 1:
        # sign(0) = +1: every value is ±α, never 0, and both signs give exactly two levels.
        a = torch.tensor(alpha).clamp_min(1e-5).expand_as(out)
        assert torch.equal(out.abs(), a)
        both = [(row >= 0).any() and (row < 0).any() for row in torch.tensor(w)]
        assert all(c == 2 for c, b in zip(counts, both, strict=True) if b)


@pytest.mark.parametrize("bits", BITS)
@FAST
@given(problem=problems())
def test_idempotent_with_same_scale(bits, problem):
    w, alpha, _ = problem
    fmt = format_for_bits(bits)
    a = torch.tensor(alpha)
    once = reference_fake_quant(torch.tensor(w), a, fmt)
    assert torch.equal(reference_fake_quant(once, a, fmt), once)


@pytest.mark.parametrize(
    ("bits", "expected"),
    [
        (1, [-1.0, 1.0]),
        (1.58, [-2 / 3, 0.0, 2 / 3]),
        (2, [-0.75, -0.25, 0.25, 0.75]),
        (3, [float(k) for k in range(-4, 4)]),
        (4, [float(k) for k in range(-8, 8)]),
    ],
)
def test_all_levels_reached_when_weights_span_the_range(bits, expected):
    # A row from -max to +max with α = max|w| (or max|w|/4 for LSQ, so Qn is reachable too).
    row = torch.linspace(-1.0, 1.0, 401).unsqueeze(0)
    fmt = format_for_bits(bits)
    alpha = init_scale(row, fmt) / (4 if fmt.family == "lsq" else 1)
    values = torch.unique(reference_fake_quant(row, alpha, fmt)) / alpha[0, 0]
    torch.testing.assert_close(values, torch.tensor(expected))


def test_lsq_init_scale_uses_all_but_the_bottom_level():
    # With α₀ = max|w|/Qp a symmetric row reaches Qn+1..Qp: 2^B − 1 levels.
    row = torch.linspace(-1.0, 1.0, 1001).unsqueeze(0)
    fmt = format_for_bits(4)
    out = reference_fake_quant(row, init_scale(row, fmt), fmt)
    assert len(torch.unique(out)) == 15


@pytest.mark.parametrize(
    ("bits", "ratio"),
    # Ternary's spec gradient uses Qp = 1 for clipped weights while they sit at α·2/3, so it is
    # 3/2 of the true derivative; the other formats' Qp is exactly their top level.
    [(1, 1.0), (1.58, 1.5), (2, 1.0), (4, 1.0)],
)
def test_scale_gradient_against_finite_differences_where_linear_in_scale(bits, ratio):
    # The STE is no derivative of round(), but where every weight is clipped (or for binary,
    # always) ŵ is linear in α, so its true derivative can be checked by finite differences.
    fmt = format_for_bits(bits)
    torch.manual_seed(0)
    w = torch.randn(3, 6, dtype=torch.float64)
    w = w.sign() * (w.abs() + 2.0) if bits != 1 else w  # |w| ≥ 2 > α·Qp: all clipped
    alpha = torch.full((3, 1), 0.25, dtype=torch.float64, requires_grad=True)
    g = torch.randn(3, 6, dtype=torch.float64)
    (reference_fake_quant(w, alpha, fmt) * g).sum().backward()

    eps = 1e-6
    numeric = torch.empty(3, 1, dtype=torch.float64)
    for i in range(3):
        up, down = alpha.detach().clone(), alpha.detach().clone()
        up[i] += eps
        down[i] -= eps
        diff = (reference_fake_quant(w, up, fmt) - reference_fake_quant(w, down, fmt)) * g
        numeric[i] = diff.sum() / (2 * eps)
    grad_scale = 1 / (w.numel() * fmt.qp) ** 0.5
    torch.testing.assert_close(alpha.grad, numeric * grad_scale * ratio)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
@pytest.mark.parametrize("bits", [1, 1.58, 4])
def test_dtypes(dtype, bits):
    fmt = format_for_bits(bits)
    w = torch.randn(4, 8).to(dtype).requires_grad_()
    alpha = init_scale(w, fmt).requires_grad_()
    out = reference_fake_quant(w, alpha, fmt)
    assert out.dtype == dtype
    out.float().square().sum().backward()
    assert w.grad.dtype == dtype and alpha.grad.dtype == torch.float32
    if dtype in (torch.bfloat16, torch.float16):
        # The math runs in fp32, so the result is the fp32 result rounded once to the dtype.
        expected = reference_fake_quant(w.detach().float(), alpha.detach(), fmt).to(dtype)
        assert torch.equal(out, expected)


def test_tiny_scale_is_clamped_not_divided_by_zero():
    fmt = format_for_bits(4)
    w = torch.randn(2, 5, requires_grad=True)
    alpha = torch.zeros(2, 1, requires_grad=True)
    out = reference_fake_quant(w, alpha, fmt)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(alpha.grad).all()
    assert out.abs().max() <= 8 * 1e-5


@pytest.mark.parametrize("bits", BITS)
def test_a_nan_scale_stays_nan(bits):
    # The floor is no repair: a diverged scale must surface as a NaN loss.
    fmt = format_for_bits(bits)
    w = torch.randn(2, 5)
    alpha = torch.tensor([[float("nan")], [0.5]])
    out = reference_fake_quant(w, alpha, fmt)
    assert torch.isnan(out[0]).all() and torch.isfinite(out[1]).all()


def test_no_gradient_requested_for_frozen_inputs():
    fmt = format_for_bits(2)
    w = torch.randn(3, 4, requires_grad=True)
    alpha = init_scale(w, fmt)  # not trainable
    reference_fake_quant(w, alpha, fmt).sum().backward()
    assert w.grad is not None and alpha.grad is None
