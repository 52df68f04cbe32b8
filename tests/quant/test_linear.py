import pytest
import torch
import torch.nn.functional as F
from torch import nn

from qat.quant import QuantConfigError, QuantLinear, fake_quant, format_for_bits, init_scale


def test_wraps_the_same_parameters():
    lin = nn.Linear(8, 4)
    q = QuantLinear.from_linear(lin, 2)
    assert q.weight is lin.weight and q.bias is lin.bias
    assert q.scale.shape == (4, 1) and q.scale.dtype == torch.float32
    torch.testing.assert_close(q.scale.data, init_scale(lin.weight, q.fmt))
    assert [n for n, _ in q.named_parameters()] == ["weight", "bias", "scale"]


def test_forward_is_linear_of_fake_quant_weight():
    lin = nn.Linear(8, 4)
    q = QuantLinear.from_linear(lin, format_for_bits(4))
    x = torch.randn(2, 3, 8)
    expected = F.linear(x, fake_quant(lin.weight, q.scale, q.fmt), lin.bias)
    torch.testing.assert_close(q(x), expected)


def test_without_bias():
    q = QuantLinear.from_linear(nn.Linear(8, 4, bias=False), "ternary")
    assert q.bias is None and q(torch.randn(5, 8)).shape == (5, 4)


def test_extra_repr():
    q = QuantLinear.from_linear(nn.Linear(8, 4), 1.58, kernel="reference")
    assert repr(q) == (
        "QuantLinear(in_features=8, out_features=4, bias=True, format=ternary, kernel=reference)"
    )


def test_inactive_is_the_plain_linear():
    linear = nn.Linear(8, 4)
    x = torch.randn(5, 8)
    q = QuantLinear.from_linear(linear, 2, kernel="reference")
    assert not torch.equal(q(x), linear(x))  # 2-bit rounding changes the output
    q.active = False
    assert torch.equal(q(x), linear(x)) and repr(q).endswith("inactive)")


def test_bad_kernel_and_bits():
    with pytest.raises(QuantConfigError, match="kernel='gpu' is unknown"):
        QuantLinear.from_linear(nn.Linear(8, 4), 4, kernel="gpu")
    with pytest.raises(QuantConfigError, match="bits=5 is not supported"):
        QuantLinear.from_linear(nn.Linear(8, 4), 5)


def test_autocast_bf16():
    q = QuantLinear.from_linear(nn.Linear(8, 4), 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = q(torch.randn(2, 8))
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert q.weight.grad.dtype == torch.float32 and q.scale.grad.dtype == torch.float32


def test_reset_scale_follows_the_weight():
    q = QuantLinear.from_linear(nn.Linear(8, 4), 4)
    with torch.no_grad():
        q.weight.mul_(3)
    q.reset_scale()
    torch.testing.assert_close(q.scale.data, init_scale(q.weight, q.fmt))


@pytest.mark.parametrize("bits", [1, 1.58, 2, 4])
def test_training_moves_the_scale_and_lowers_the_loss(bits):
    torch.manual_seed(0)
    teacher = torch.randn(6, 16)
    x = torch.randn(64, 16)
    y = x @ teacher.T
    q = QuantLinear.from_linear(nn.Linear(16, 6), bits)
    start = q.scale.detach().clone()
    opt = torch.optim.Adam(q.parameters(), lr=2e-2)
    losses = []
    for _ in range(60):
        loss = F.mse_loss(q(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert not torch.allclose(q.scale, start)
    assert losses[-1] < 0.5 * losses[0]
