"""The packed folder round-trips for every bit width and float format: a quantized model's final
checkpoint, exported and loaded, gives back its fake-quantized weights bit for bit and its other
tensors unchanged; the file holds codes (and block scales) at B/8 bytes a weight; a float
format's hf folder computes our logits in transformers."""

from __future__ import annotations

import json

import pytest
import torch

from qat.checkpoint import save_weights
from qat.data.tokenizer import EOT, save_tokenizer, train_tokenizer
from qat.export import ExportError, load
from qat.export.packed import export_packed
from qat.export.packing import TRITS
from qat.export.run import FinishedRun
from qat.model import Transformer
from qat.orchestration.grid import expand_grid
from qat.quant import (
    FLOAT_FORMATS,
    QuantLinear,
    fake_quant,
    is_full_precision,
    quantize_model,
    resolve_format,
)
from qat.quant.embedding import quantize_embeddings
from tests.export.helpers import TEXT

BITS = (16, 8, 6, 4, 3, 2, 1.58, 1)


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    save_tokenizer(train_tokenizer(TEXT * 20, vocab_size=300), path)
    return path


def finished(tmp_path, tokenizer_path, bits, embeddings=False, quant_format="int"):
    """A real final checkpoint of a trained-looking nano model (random weights and scales)."""
    overrides = [
        "model=nano",
        "data.vocab_size=300",
        f"bits={bits}",
        f"quant.format={quant_format}",
    ]
    (config,) = expand_grid([*overrides, f"quant.embeddings={str(embeddings).lower()}"], {})
    torch.manual_seed(0)
    model = Transformer(config.model, 300)
    if not is_full_precision(bits):
        fmt = resolve_format(bits, quant_format)
        quantize_model(model, fmt, exclude=config.quant.exclude)
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
    assert_round_trip(model, run, tmp_path, torch.equal)


@pytest.mark.parametrize("name", list(FLOAT_FORMATS))
def test_every_float_format_round_trips(tmp_path, tokenizer_path, name):
    """Element bit patterns, block scales and the NV tensor scale give back ŵ bit for bit."""
    bits = FLOAT_FORMATS[name].element.bits
    model, run = finished(tmp_path, tokenizer_path, bits, quant_format=name)
    assert_round_trip(model, run, tmp_path, same_bits)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal as float32 bit patterns: -0.0 differs from 0.0 (integer codes keep one zero, so
    their levels give +0.0 where the quantizer rounded to -0.0; torch.equal compares those)."""
    return torch.equal(a.view(torch.int32), b.view(torch.int32))


def assert_round_trip(model, run, tmp_path, equal):
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
        assert equal(loaded[name], want.detach()), name
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


@pytest.mark.parametrize("name", list(FLOAT_FORMATS))
def test_float_codes_and_block_scales_take_bits_over_eight_bytes(tmp_path, tokenizer_path, name):
    """Element codes at element bits / 8 bytes a weight, one byte per block; the whole file is
    those, the float32 tensors and the safetensors header, nothing else."""
    from safetensors import safe_open

    fmt = FLOAT_FORMATS[name]
    model, run = finished(tmp_path, tokenizer_path, fmt.element.bits, quant_format=name)
    export_packed(run, tmp_path / "out")
    path = tmp_path / "out" / "model.safetensors"
    with safe_open(str(path), framework="pt") as handle:
        stored = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
    layers = {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}
    size = fmt.blocks.block_size if fmt.blocks is not None else None
    for layer, module in layers.items():
        rows, cols = module.weight.shape
        assert stored[f"{layer}.codes"].numel() == -(-rows * cols * fmt.element.bits // 8)
        assert stored[f"{layer}.scale"].shape == (rows, 1)
        if size is None:
            assert f"{layer}.block_scale" not in stored
        else:  # a short last block of a row still takes its byte
            assert stored[f"{layer}.block_scale"].shape == (rows, -(-cols // size))
        assert (f"{layer}.tensor_scale" in stored) == (name == "nvfp4")
    weights = sum(m.weight.numel() for m in layers.values())
    quantized = sum(t.numel() for k, t in stored.items() if k.endswith((".codes", ".block_scale")))
    # nano's w2 rows are 176 wide: 5.5 MX blocks stored as 6, hence the tolerance.
    assert quantized == pytest.approx(weights * fmt.bits / 8, rel=0.02)
    header = 8 + int.from_bytes(path.read_bytes()[:8], "little")
    payload = sum(t.numel() * t.element_size() for t in stored.values())
    assert path.stat().st_size == header + payload


@pytest.mark.parametrize("name", list(FLOAT_FORMATS))
def test_a_float_formats_hf_folder_computes_our_logits_in_transformers(
    tmp_path, tokenizer_path, name
):
    from transformers import LlamaForCausalLM

    from qat.export.hf import export_hf

    model, run = finished(tmp_path, tokenizer_path, FLOAT_FORMATS[name].element.bits, False, name)
    export_hf(run, tmp_path / "hf")
    hf = LlamaForCausalLM.from_pretrained(tmp_path / "hf", local_files_only=True).eval()
    ids = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        theirs, ours = hf(ids).logits, model.eval()(ids)
    assert (theirs - ours).abs().max().item() <= 1e-4
    # The hf weights are the fake-quantized ones (q and k permuted for Llama's RoPE layout).
    down = model.layers[0].feed_forward.w2
    want = fake_quant(down.weight, down.scale, down.fmt).detach()
    assert torch.equal(hf.model.layers[0].mlp.down_proj.weight, want)


def test_a_folder_of_a_newer_version_or_another_element_layout_is_refused(tmp_path, tokenizer_path):
    """A reader never decodes bits whose layout it does not know: one line, no model."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    _, run = finished(tmp_path, tokenizer_path, 4, False, "mxfp4")
    export_packed(run, tmp_path / "out")
    config = tmp_path / "out" / "config.json"
    info = json.loads(config.read_text())
    config.write_text(json.dumps({**info, "version": info["version"] + 1}))
    with pytest.raises(ExportError, match="reads up to version") as error:
        load(tmp_path / "out")
    assert "\n" not in str(error.value)
    config.write_text(json.dumps(info))

    weights = tmp_path / "out" / "model.safetensors"
    with safe_open(str(weights), framework="pt") as handle:
        metadata = handle.metadata()
    layers = json.loads(metadata["layers"])
    layers["layers.0.attention.wq"]["element"]["bias"] = 2  # as if e2m1 were biased otherwise
    save_file(load_file(weights), weights, metadata={**metadata, "layers": json.dumps(layers)})
    with pytest.raises(ExportError, match=r"layers\.0\.attention\.wq: its mxfp4 element"):
        load(tmp_path / "out")
