"""The packed engine's parts against their single-cell counterparts (CPU, fp32, one thread):
the weight layout, the fake-quant of a format slice (integer and float formats), and the
optimizer with its clip."""

from __future__ import annotations

import pytest
import torch

from qat.config import ModelConfig, OptimConfig
from qat.engine.packed.forward import Segment, effective_weight
from qat.engine.packed.optimizer import PackedAdamW
from qat.engine.packed.weights import SCALES, ParameterLayout
from qat.model import Transformer
from qat.quant import (
    FLOAT_FORMATS,
    FakeQuantFunction,
    format_for_bits,
    init_scale,
    ops,
    quantize_model,
)
from qat.quant.reference import reference_fake_quant

CONFIG = ModelConfig(name="t", dim=32, n_layers=2, n_heads=4, ffn_dim=64)
VOCAB = 97


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def models(count: int) -> list[Transformer]:
    made = []
    for seed in range(count):
        torch.manual_seed(seed)
        made.append(Transformer(CONFIG, VOCAB))
    return made


def quantized_names() -> list[str]:
    return quantize_model(Transformer(CONFIG, VOCAB), 4, "reference", ("tok_embeddings", "output"))


def test_a_stacked_member_is_its_model():
    members = models(3)
    layout = ParameterLayout(members[0], quantized_names())
    flats = layout.stack(members, torch.device("cpu"))
    for row, model in enumerate(members):
        state = layout.member_state(flats, row)
        expected = model.state_dict()
        assert state.keys() == expected.keys()
        for name, value in expected.items():
            assert torch.equal(state[name], value), name
    views = layout.views(flats)
    assert views["layers.1.feed_forward.w2.weight"].shape == (3, 32, 64)
    assert views["layers.0.attention.wq.scale"].shape == (3, 32, 1)


@pytest.mark.parametrize("bits", [1.0, 1.58, 2.0, 4.0])
def test_a_format_slice_is_each_members_own_fake_quant(bits):
    fmt = format_for_bits(bits)
    generator = torch.Generator().manual_seed(int(bits * 100))
    weight = torch.randn(4, 24, 16, generator=generator) * 0.05
    scale = torch.stack([init_scale(w, fmt) for w in weight])
    weight.requires_grad_()
    scale.requires_grad_()
    upstream = torch.randn(4, 24, 16, generator=generator)
    # rows 0-1 FP, rows 1..3 in the format
    out = effective_weight(weight, scale, [Segment(None, 0, 1), Segment(fmt, 1, 4)], "reference")
    out.backward(upstream)
    assert torch.equal(out[0], weight[0]) and torch.equal(weight.grad[0], upstream[0])
    assert torch.count_nonzero(scale.grad[0]) == 0
    for row in range(1, 4):
        w = weight[row].detach().clone().requires_grad_()
        s = scale[row].detach().clone().requires_grad_()
        alone = FakeQuantFunction.apply(w, s, fmt)
        alone.backward(upstream[row])
        assert torch.equal(out[row], alone)
        assert torch.equal(weight.grad[row], w.grad)
        assert torch.equal(scale.grad[row], s.grad)


@pytest.mark.parametrize("kernel", ["reference", "cuda"])
@pytest.mark.parametrize("name", sorted(FLOAT_FORMATS))
def test_a_float_format_slice_is_each_members_own_fake_quant(name, kernel, monkeypatch):
    """A pack of FP, INT4 and three members of a float format: each member's weight and
    gradients are those it gets alone. The members differ in magnitude and their scales are
    off their initial values, so every member's w/α has its own amax: NVFP4's per-tensor scale
    then differs between members, and a pack that shared it would fail here. ``cuda``: the path
    of a resolved kernel other than the reference (one fake-quant of the stacked members, its
    scale gradient rescaled), here with the reference registered as "cuda" since a CPU has no
    kernel; exact up to the scale gradient's rounding."""
    if kernel == "cuda":
        monkeypatch.setattr(ops, "_BACKENDS", dict(ops._BACKENDS))
        ops.register_backend("cuda", reference_fake_quant, lambda w: True)
    fmt = FLOAT_FORMATS[name]
    int4 = format_for_bits(4)
    forms = [None, int4, fmt, fmt, fmt]
    segments = [Segment(None, 0, 1), Segment(int4, 1, 2), Segment(fmt, 2, 5)]
    generator = torch.Generator().manual_seed(7)
    # 40 inputs: two and a half NV blocks, one and a quarter MX blocks a row.
    magnitude = torch.tensor([1.0, 0.1, 0.02, 0.3, 2.0]).view(-1, 1, 1)
    weight = torch.randn(5, 24, 40, generator=generator) * magnitude
    jitter = 0.5 + torch.rand(5, 24, 1, generator=generator)
    scale = torch.stack([init_scale(w, f or fmt) for w, f in zip(weight, forms, strict=True)])
    weight.requires_grad_()
    scale = (scale * jitter).requires_grad_()
    upstream = torch.randn(5, 24, 40, generator=generator)
    out = effective_weight(weight, scale, segments, kernel)
    out.backward(upstream)
    for row, form in enumerate(forms):
        if form is None:
            assert torch.equal(out[row], weight[row]) and torch.count_nonzero(scale.grad[row]) == 0
            continue
        w = weight[row].detach().clone().requires_grad_()
        s = scale[row].detach().clone().requires_grad_()
        alone = FakeQuantFunction.apply(w, s, form)
        alone.backward(upstream[row])
        assert torch.equal(out[row], alone), row
        assert torch.equal(weight.grad[row], w.grad), row
        if kernel == "reference":
            assert torch.equal(scale.grad[row], s.grad), row
        else:
            torch.testing.assert_close(scale.grad[row], s.grad, rtol=1e-5, atol=0.0)


def test_the_optimizer_steps_each_member_as_adamw_with_clipping_steps_it_alone():
    """Per-member learning rates, a clip that binds for some members, QAT for one of them."""
    config = OptimConfig(lr=1e-2, weight_decay=0.1, grad_clip=0.5)
    members = models(3)
    names = quantized_names()
    layout = ParameterLayout(members[0], names)
    flats = {g: f.requires_grad_() for g, f in layout.stack(members, torch.device("cpu")).items()}
    fmt = format_for_bits(2)
    singles = models(3)
    quantize_model(singles[2], fmt, "reference", ("tok_embeddings", "output"))
    with torch.no_grad():  # member 2 in QAT: its scales as the single model's
        for name in names:
            layout.views(flats)[f"{name}.scale"][2].copy_(singles[2].get_submodule(name).scale)
    optimizer = PackedAdamW(flats, layout, config, scale_lr_mult=1.0)
    torch_optimizers = []
    for model in singles:
        decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and not n.endswith("scale")]
        rest = [p for n, p in model.named_parameters() if p.ndim < 2 and not n.endswith("scale")]
        scales = [p for n, p in model.named_parameters() if n.endswith("scale")]
        groups = [{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}]
        if scales:
            groups.append({"params": scales, "weight_decay": 0.0})
        torch_optimizers.append(torch.optim.AdamW(groups, lr=1e-2, betas=config.betas))
    lrs = [1e-2, 3e-3, 1e-2]
    in_qat = torch.tensor([False, False, True])
    generator = torch.Generator().manual_seed(1)
    for step in range(4):
        grads = {
            g: torch.randn(f.shape, generator=generator) * (step + 1) for g, f in flats.items()
        }
        grads[SCALES][:2] = 0  # FP members' scales get no gradient
        for group, flat in flats.items():
            flat.grad = grads[group].clone()
        optimizer.clip(flats, in_qat)
        optimizer.step(flats, torch.tensor(lrs, dtype=torch.float64), in_qat)
        for row, (model, torch_optimizer) in enumerate(zip(singles, torch_optimizers, strict=True)):
            params = dict(model.named_parameters())
            for name, slot in layout.slots.items():
                if name in params:
                    params[name].grad = (
                        grads[slot.group][row, slot.offset : slot.end].view(slot.shape).clone()
                    )
            for group in torch_optimizer.param_groups:
                group["lr"] = lrs[row]
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            torch_optimizer.step()
    for row, model in enumerate(singles):
        packed = layout.member_state(flats, row, quantized=row == 2)
        for name, value in model.state_dict().items():
            assert torch.equal(packed[name], value), (row, name)


@pytest.mark.parametrize("upstream_varies", [False, True])
@pytest.mark.parametrize("autocast", [False, True])
def test_the_chunked_head_and_loss_is_the_plain_one(monkeypatch, autocast, upstream_varies):
    """Values and gradients of the chunked loss against F.cross_entropy over full logits, in
    fp32 and under bf16 autocast (the logits' matmuls then round alike, chunk by chunk), for an
    upstream gradient that is one number per member (training: gradients from the forward)
    and one that varies along the tokens (recomputed in the backward)."""
    from qat.engine.packed import loss
    from qat.engine.packed.forward import cross_entropy, linear

    members, tokens, dim, vocab = 3, 40, 16, VOCAB
    monkeypatch.setattr(loss, "CHUNK_VALUES", members * vocab * 7)  # 6 chunks, a short last one
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(members, tokens, dim, generator=generator)
    head = torch.randn(members, vocab, dim, generator=generator) * 0.3
    targets = torch.randint(0, vocab, (members, tokens), generator=generator)
    upstream = torch.rand(members, tokens if upstream_varies else 1, generator=generator)
    upstream = upstream.expand(members, tokens)

    def run(fused: bool) -> tuple[torch.Tensor, ...]:
        h, w = hidden.clone().requires_grad_(), head.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            if fused:
                values = loss.LinearCrossEntropy()(h, w, targets)
            else:
                values = cross_entropy(linear(h, w), targets)
        (values * upstream).sum().backward()
        return values.detach(), h.grad, w.grad

    for fused, plain in zip(run(True), run(False), strict=True):
        assert fused.dtype == plain.dtype
        if autocast:  # bf16 rounds the logits' gradient at another point: compare as a whole
            assert (fused - plain).norm() <= 1e-2 * plain.norm()
        else:
            torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-6)


def test_the_fused_forward_is_the_member_by_member_one():
    """The GPU layout (q|k|v and gate|up as one matmul each, the chunked loss) against the
    single-cell operations one by one: same losses and gradients, a QAT member included."""
    from qat.engine.packed.forward import PackedForward
    from qat.model import rotary_tables

    members, batch, seq = 3, 2, 16
    layout = ParameterLayout(models(1)[0], quantized_names())
    flats = layout.stack(models(members), torch.device("cpu"))
    fmt = format_for_bits(2.0)
    with torch.no_grad():
        views = layout.views(flats)
        for name in layout.quantized:  # the last member in QAT, its scales from its weights
            views[f"{name}.scale"][2] = init_scale(views[f"{name}.weight"][2], fmt)
    segments = [Segment(None, 0, 2), Segment(fmt, 2, 3)]
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, VOCAB, (members, batch, seq), generator=generator)
    targets = torch.randint(0, VOCAB, (members, batch, seq), generator=generator)
    rope = rotary_tables(CONFIG.dim // CONFIG.n_heads, seq, CONFIG.rope_theta, torch.device("cpu"))

    def run(fused: bool) -> list[torch.Tensor]:
        leaves = {g: f.detach().clone().requires_grad_() for g, f in flats.items()}
        forward = PackedForward(CONFIG, layout.quantized, "reference", fused=fused)
        losses = forward.token_losses(layout.views(leaves), tokens, targets, rope, segments)
        losses.mean(dim=1).sum().backward()
        return [losses.detach(), *(leaves[g].grad for g in sorted(leaves))]

    for fused, plain in zip(run(True), run(False), strict=True):
        torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-6)
