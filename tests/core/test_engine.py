"""The engine's parts, each on its own: the QAT switch (the same model whichever way a backend
builds it), the trainer's state in a checkpoint, and the backend factory."""

from __future__ import annotations

import copy

import pytest
import torch

from qat.config import ModelConfig, QuantConfig
from qat.engine import QatSwitch, TrainState
from qat.engine.torch_backend import TorchBackend
from qat.errors import ConfigError, TrainingError
from qat.model import Transformer
from qat.optim import SCALE_GROUP, build_optimizer
from qat.orchestration.grid import expand_grid
from qat.quant import QuantLinear

MODEL = ModelConfig(name="t", dim=32, n_layers=2, n_heads=4, ffn_dim=64)
OPTIM = expand_grid([])[0].optim


def trained_model() -> tuple[torch.nn.Module, torch.optim.Optimizer, torch.Tensor]:
    """A model a few AdamW steps away from its init (so its scales differ from init's)."""
    torch.manual_seed(0)
    model = Transformer(MODEL, 64)
    optimizer = build_optimizer(model, OPTIM)
    tokens = torch.randint(0, 64, (4, 16))
    for _ in range(3):
        model(tokens).logsumexp(-1).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    return model, optimizer, tokens


@pytest.mark.parametrize("embeddings", [False, True])
@pytest.mark.parametrize("bits", [1.0, 2.0, 4.0])
def test_converting_early_then_switching_is_switching_late(bits, embeddings):
    switch = QatSwitch(bits, QuantConfig(kernel="reference", embeddings=embeddings))
    late, late_opt, tokens = trained_model()
    early = Transformer(MODEL, 64)
    early_opt = build_optimizer(early, OPTIM)
    switch.convert(early, early_opt, active=False)  # as a fixed-parameter engine builds it
    early.load_state_dict({**early.state_dict(), **late.state_dict()})
    early_opt.load_state_dict(
        {**early_opt.state_dict(), "state": copy.deepcopy(late_opt.state_dict()["state"])}
    )
    with torch.no_grad():
        fp_logits = late(tokens)
        assert torch.equal(early(tokens), fp_logits)  # inactive: plain Linear maths

    switch.switch(late, late_opt)
    switch.switch(early, early_opt)
    assert [g["name"] for g in early_opt.param_groups] == [g["name"] for g in late_opt.param_groups]
    assert early_opt.param_groups[-1]["name"] == SCALE_GROUP
    for a, b in zip(switch.layers(early), switch.layers(late), strict=True):
        assert a.active and b.active
        assert torch.equal(a.scale, b.scale)  # both from the weights at the switch
    with torch.no_grad():
        assert torch.equal(early(tokens), late(tokens))
        assert not torch.equal(late(tokens), fp_logits)  # it does quantize


def test_restore_builds_the_qat_form_before_a_quantized_checkpoint_loads():
    switch = QatSwitch(4.0, QuantConfig(kernel="reference"))
    model, optimizer, _ = trained_model()
    switch.restore(model, optimizer)
    layers = [m for m in model.modules() if isinstance(m, QuantLinear)]
    assert layers and all(layer.active for layer in layers)
    assert optimizer.param_groups[-1]["name"] == SCALE_GROUP


def test_the_train_state_round_trips_and_refuses_another_backend(tmp_path):
    (config,) = expand_grid(["trainer.device=cpu"])
    backend = TorchBackend(config)
    model, optimizer, _ = trained_model()
    state = TrainState(step=12, quantized=True, fp_val_loss=3.25, loader={"cursor": 5})
    saved = backend.save(tmp_path, 4096, model, optimizer, state.to_json("torch", False), keep=2)
    assert saved is not None
    assert TrainState.from_checkpoint(saved, "torch") == state
    with pytest.raises(TrainingError, match="written by trainer=torch, not deepspeed"):
        TrainState.from_checkpoint(saved, "deepspeed")


def test_the_factory_refuses_an_unknown_backend_and_torch_refuses_several_processes(
    monkeypatch,
):
    from dataclasses import replace

    from qat.engine import make_backend

    (config,) = expand_grid([])
    with pytest.raises(ConfigError, match=r"trainer\.backend='packed' is one of"):
        make_backend(replace(config, trainer=replace(config.trainer, backend="packed")))
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="trainer=torch runs one process per cell"):
        make_backend(config)
