"""The float formats (minifloats, MXFP4, NVFP4) against their bit layouts and block-scale recipes,
written out independently in tests/quant/float_formula.py."""

from __future__ import annotations

import itertools

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qat.quant import FLOAT_FORMATS, QuantConfigError, levels, reference_fake_quant, resolve_format
from qat.quant.block_scaled import project
from qat.quant.minifloat import round_to_grid
from tests.quant import float_formula as formula

FAST = settings(max_examples=30, deadline=None)
MINIFLOATS = ("fp4_e2m1", "fp6_e2m3", "fp6_e3m2", "fp8_e4m3")
BLOCKED = ("mxfp4", "nvfp4")
ALL = (*MINIFLOATS, *BLOCKED)


def midpoints(name: str) -> list[float]:
    """Exact ties between neighbours, and points past the top: the cases rounding gets wrong."""
    g = formula.grid(name)
    top = g[-1]
    return [(a + b) / 2 for a, b in itertools.pairwise(g)] + [top * 1.01, top * 1.1, 1e6]


def values(name: str) -> st.SearchStrategy[float]:
    top = formula.max_normal(name)
    return st.one_of(
        st.floats(-2 * top, 2 * top, width=32),
        st.floats(-(2.0**-10), 2.0**-10, width=32),
        st.sampled_from(midpoints(name) + formula.grid(name)).map(np.float32),
    )


@pytest.mark.parametrize(
    ("name", "bits"),
    [
        ("fp4_e2m1", 4),
        ("fp6_e2m3", 6),
        ("fp6_e3m2", 6),
        ("fp8_e4m3", 8),
        ("mxfp4", 4.25),
        ("nvfp4", 4.5),
    ],
)
def test_the_registry_gives_bits_per_weight_with_the_scale_overhead(name, bits):
    assert FLOAT_FORMATS[name].bits == bits


@pytest.mark.parametrize("name", ALL)
def test_the_levels_are_the_decoded_bit_patterns(name):
    assert list(levels(FLOAT_FORMATS[name])) == formula.grid(name)
    assert FLOAT_FORMATS[name].qp == formula.max_normal(name)


@pytest.mark.parametrize("name", MINIFLOATS)
@FAST
@given(data=st.data())
def test_rounding_is_to_nearest_even_on_the_grid_and_saturates(name, data):
    v = data.draw(hnp.arrays(np.float32, data.draw(st.integers(1, 64)), elements=values(name)))
    got = round_to_grid(torch.tensor(v), FLOAT_FORMATS[name].element)
    expected = torch.tensor([formula.round_nearest_even(x, name) for x in v], dtype=torch.float32)
    assert torch.equal(got, expected)
    assert set(got.abs().tolist()) <= set(formula.grid(name))


@st.composite
def problems(draw):
    """(w, α, g): a weight with rows cut into several (and partial) blocks, a per-row scale."""
    rows, cols = draw(st.integers(1, 3)), draw(st.integers(1, 40))
    elements = st.one_of(
        st.floats(-4, 4, width=32), st.sampled_from([0.0, 0.5, -1.5, 2.5]).map(np.float32)
    )
    w = draw(hnp.arrays(np.float32, (rows, cols), elements=elements))
    alpha = draw(hnp.arrays(np.float32, (rows, 1), elements=st.floats(2.0**-10, 2.0, width=32)))
    g = draw(hnp.arrays(np.float32, (rows, cols), elements=st.floats(-2, 2, width=32)))
    return w, alpha, g


def fake_quant(w, alpha, g, name):
    wt, at = torch.tensor(w, requires_grad=True), torch.tensor(alpha, requires_grad=True)
    out = reference_fake_quant(wt, at, FLOAT_FORMATS[name])
    out.backward(torch.tensor(g))
    return out.detach(), wt.grad, at.grad


@pytest.mark.parametrize("name", ALL)
@FAST
@given(data=st.data())
def test_fake_quant_is_alpha_times_scale_times_a_grid_value_with_the_ste(name, data):
    w, alpha, g = data.draw(problems())
    out, grad_w, grad_alpha = fake_quant(w, alpha, g, name)
    u = w / alpha  # float32, as the reference divides
    q, s = formula.quantize(u, name)
    assert set(np.abs(q).ravel().tolist()) <= set(formula.grid(name))
    assert torch.equal(out, torch.tensor(alpha * (s * q)))
    # The STE: the gradient passes exactly where u is inside ±s·max (everywhere when s is 0).
    top = formula.max_normal(name)
    inside = (s == 0) | (np.abs(u) <= s * top)
    assert torch.equal(grad_w, torch.tensor(np.where(inside, g, np.float32(0))))
    # LSQ's scale gradient: s·q − u inside, the crossed bound ±s·max outside, times 1/sqrt(N·max).
    dq = np.where(inside, s.astype(np.float64) * q - u, np.sign(u) * s * top)
    expected = (dq * g).sum(axis=1, keepdims=True) / np.sqrt(w.size * top)
    torch.testing.assert_close(
        grad_alpha, torch.tensor(expected, dtype=torch.float32), rtol=1e-4, atol=1e-5
    )


@pytest.mark.parametrize("name", BLOCKED)
@FAST
@given(data=st.data())
def test_block_scales_follow_the_spec(name, data):
    rows, cols = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 70))
    exponent = data.draw(st.integers(-20, 20))
    u = data.draw(hnp.arrays(np.float32, (rows, cols), elements=st.floats(-8, 8, width=32)))
    u = u * np.float32(2.0**exponent)
    fmt = FLOAT_FORMATS[name]
    assert fmt.element is not None and fmt.blocks is not None
    q, s = project(torch.tensor(u), fmt.element, fmt.blocks)
    expected_q, expected_s = formula.quantize(u, name)
    assert torch.equal(s, torch.tensor(expected_s))
    assert torch.equal(q, torch.tensor(expected_q))
    if name == "mxfp4":  # E8M0: every scale is a power of two
        assert torch.equal(torch.frexp(s)[0], torch.full_like(s, 0.5))


def test_a_float_format_needs_its_element_bits():
    assert resolve_format(4, "mxfp4") is FLOAT_FORMATS["mxfp4"]
    assert resolve_format(4, "int").name == "int4"
    with pytest.raises(QuantConfigError, match="set bits=6"):
        resolve_format(4, "fp6_e2m3")
    with pytest.raises(QuantConfigError, match="allowed: int, fp4_e2m1, fp6_e2m3") as info:
        resolve_format(4, "fp5")
    assert "\n" not in str(info.value)
