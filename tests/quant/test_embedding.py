"""The embedding and LM head quantized at max(bits, 4): one tied table, one scale, its levels in
both the lookup and the logits; the QAT switch gives each scale to the optimizer once."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from qat.config import ModelConfig, OptimConfig, QuantConfig, RunConfig
from qat.engine import QatSwitch
from qat.errors import ConfigError
from qat.model import Transformer
from qat.optim import SCALE_GROUP, build_optimizer
from qat.quant import QuantEmbedding, QuantLinear, fake_quant, quantize_embeddings

MODEL = ModelConfig(name="t", dim=32, n_layers=2, n_heads=4, ffn_dim=64)
VOCAB = 50


@pytest.mark.parametrize(("bits", "expected"), [(1.0, 4.0), (1.58, 4.0), (2.0, 4.0), (6.0, 6.0)])
def test_the_tied_table_and_head_share_one_scale_at_max_bits_4(bits, expected):
    torch.manual_seed(0)
    model = Transformer(MODEL, VOCAB)
    plain = copy.deepcopy(model)
    assert quantize_embeddings(model, bits, "reference") == ["tok_embeddings", "output"]
    table, head = model.tok_embeddings, model.output
    assert isinstance(table, QuantEmbedding) and isinstance(head, QuantLinear)
    assert head.scale is table.scale and head.weight is table.weight
    assert table.fmt.bits == head.fmt.bits == expected
    # The quantized model is the plain one with its table replaced by the quantized table.
    quantized = fake_quant(table.weight, table.scale, table.fmt, "reference").detach()
    with torch.no_grad():
        plain.tok_embeddings.weight.copy_(quantized)
    tokens = torch.randint(0, VOCAB, (2, 8))
    with torch.no_grad():
        assert torch.allclose(model(tokens), plain(tokens), atol=1e-6)
        assert not torch.allclose(model(tokens), Transformer(MODEL, VOCAB)(tokens))


def test_an_untied_head_gets_its_own_scale():
    model = Transformer(dataclasses.replace(MODEL, tie_embeddings=False), VOCAB)
    quantize_embeddings(model, 2.0, "reference")
    assert model.output.scale is not model.tok_embeddings.scale


def test_the_switch_trains_every_scale_once_and_restores_from_a_state_dict():
    torch.manual_seed(0)
    model = Transformer(MODEL, VOCAB)
    optimizer = build_optimizer(model, OptimConfig())
    switch = QatSwitch(1.0, QuantConfig(kernel="reference", embeddings=True))
    switch.switch(model, optimizer)
    (scales,) = [g["params"] for g in optimizer.param_groups if g["name"] == SCALE_GROUP]
    linears = 2 * 7  # wq wk wv wo w1 w2 w3 per layer
    assert len(scales) == len({id(s) for s in scales}) == linears + 1  # + the table's
    tokens = torch.randint(0, VOCAB, (2, 8))
    model(tokens).logsumexp(-1).mean().backward()
    assert model.tok_embeddings.scale.grad is not None
    assert torch.count_nonzero(model.tok_embeddings.scale.grad) > 0
    optimizer.step()
    restored = Transformer(MODEL, VOCAB)
    switch.restore(restored, build_optimizer(restored, OptimConfig()))
    restored.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(restored(tokens), model(tokens))


def test_packed_cells_refuse_it_in_one_line():
    tree = {
        "bits": 2,
        "qat_frac": 0.3,
        "tokens": "2M",
        "fusion": False,
        "seed": 0,
        "model": {"name": "t", "dim": 32, "n_layers": 2, "n_heads": 4, "ffn_dim": 64},
        "data": {"source": "bundled", "vocab_size": 4096},
        "quant": {"embeddings": True},
        "trainer": {"backend": "packed"},
    }
    with pytest.raises(ConfigError, match=r"quant\.embeddings=false with trainer=packed") as info:
        RunConfig.from_dict(tree)
    assert "\n" not in str(info.value)
    tree["trainer"] = {"backend": "torch"}
    assert RunConfig.from_dict(tree).quant.embeddings
