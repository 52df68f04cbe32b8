"""The packed folder round-trips for every bit width: a quantized model's final checkpoint,
exported and loaded, gives back its fake-quantized weights bit for bit and its other tensors
unchanged; the file holds codes at B/8 bytes a weight."""

from __future__ import annotations

import pytest
import torch

from qat.checkpoint import save_weights
from qat.data.tokenizer import EOT, save_tokenizer, train_tokenizer
from qat.export import load
from qat.export.packed import export_packed
from qat.export.packing import TRITS
from qat.export.run import FinishedRun
from qat.model import Transformer
from qat.orchestration.grid import expand_grid
from qat.quant import QuantLinear, fake_quant, is_full_precision, quantize_model
from qat.quant.embedding import quantize_embeddings
from tests.export.helpers import TEXT

BITS = (16, 8, 6, 4, 3, 2, 1.58, 1)


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    save_tokenizer(train_tokenizer(TEXT * 20, vocab_size=300), path)
    return path


def finished(tmp_path, tokenizer_path, bits, embeddings=False):
    """A real final checkpoint of a trained-looking nano model (random weights and scales)."""
    overrides = ["model=nano", "data.vocab_size=300", f"bits={bits}"]
    (config,) = expand_grid([*overrides, f"quant.embeddings={str(embeddings).lower()}"], {})
    torch.manual_seed(0)
    model = Transformer(config.model, 300)
    if not is_full_precision(bits):
        quantize_model(model, bits, exclude=config.quant.exclude)
        if embeddings:
            quantize_embeddings(model, bits)
        with torch.no_grad():  # scales away from their initial value, as after training
            for layer in model.modules():
                if hasattr(layer, "scale"):
                    layer.scale.mul_(0.5 + torch.rand_like(layer.scale))
    run_dir = tmp_path / "run"
    checkpoint = save_weights(run_dir / "checkpoints", 1000, model.state_dict(), {})
    return model, FinishedRun(run_dir, config, checkpoint, tokenizer_path, EOT, 1.0, None)


@pytest.mark.parametrize(
    ("bits", "embeddings"), [*((b, False) for b in BITS), (2, True), (8, True)]
)
def test_every_bit_width_round_trips(tmp_path, tokenizer_path, bits, embeddings):
    """With quant.embeddings=true the table and the tied head are at max(bits, 4) too."""
    model, run = finished(tmp_path, tokenizer_path, bits, embeddings)
    export_packed(run, tmp_path / "out")
    exported = load(tmp_path / "out").model
    loaded = exported.state_dict()
    for name, tensor in model.state_dict().items():
        if name.endswith(".scale"):
            continue
        layer = model.get_submodule(name.rsplit(".", 1)[0])
        want = (
            fake_quant(layer.weight, layer.scale, layer.fmt) if hasattr(layer, "scale") else tensor
        )
        assert torch.equal(loaded[name], want.detach()), name
    ids = torch.randint(0, 300, (2, 16))
    with torch.no_grad():  # the loaded model computes what the quantized one computed
        assert torch.equal(exported(ids), model(ids))


@pytest.mark.parametrize(("bits", "bytes_per_weight"), [(4, 0.5), (1.58, 0.2), (1, 0.125)])
def test_codes_take_bits_over_eight_bytes(tmp_path, tokenizer_path, bits, bytes_per_weight):
    from safetensors import safe_open

    model, run = finished(tmp_path, tokenizer_path, bits)
    export_packed(run, tmp_path / "out", TRITS)
    with safe_open(str(tmp_path / "out" / "model.safetensors"), framework="pt") as handle:
        codes = sum(handle.get_tensor(k).numel() for k in handle.keys() if k.endswith(".codes"))  # noqa: SIM118
    weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, QuantLinear))
    assert codes == pytest.approx(weights * bytes_per_weight, rel=1e-3)
