"""The packed format: a folder with

- ``model.safetensors``: each quantized Linear as ``<name>.codes`` (bit-packed uint8: its integer
  codes, or a float format's element bit patterns) and ``<name>.scale`` (its per-output-channel
  α, float32 [out, 1]); a block-scaled format adds ``<name>.block_scale`` (one byte per block,
  uint8 [out, blocks]) and NV's ``<name>.tensor_scale`` (float32 [1]); every tensor kept out of
  quantization (embeddings, norms, an untied output head) as it was trained; the header's
  metadata says how each layer is encoded;
- ``config.json``: the model shape, the vocabulary, the bit width and format, and where the
  model came from;
- ``tokenizer.json``: the run's tokenizer.

Dequantizing gives back the fake-quantized weights bit for bit (qat.quant.codes,
qat.export.float_codes), so the loaded model computes exactly what the run evaluated.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer

from qat.config import ModelConfig
from qat.data.tokenizer import EOT
from qat.export.errors import ExportError
from qat.export.float_codes import FloatCodes, dequantize_float, float_codes
from qat.export.packing import TRITS, encoding_name, pack, unpack
from qat.export.run import FinishedRun
from qat.export.staging import staged
from qat.export.weights import layer_format
from qat.model import Transformer
from qat.quant import FLOAT_FORMATS, QuantFormat, format_for_bits
from qat.quant.codes import dequantize, quant_codes

FORMAT = "qat-packed"
# 2: layers may be in a float format (element bit patterns, block scales). A reader refuses a
# folder of a newer version rather than decode codes it does not know.
VERSION = 2
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"
_SCALE = ".scale"
_CODES = ".codes"
_BLOCK_SCALE = ".block_scale"
_TENSOR_SCALE = ".tensor_scale"
_WEIGHT = ".weight"


@dataclass
class Exported:
    """A model read back from an export folder, ready to evaluate or sample from."""

    model: Transformer
    tokenizer: Tokenizer
    info: dict[str, Any]  # config.json

    @property
    def end_id(self) -> int | None:
        return self.tokenizer.token_to_id(str(self.info.get("end_token", EOT)))

    @property
    def seq_len(self) -> int:
        return int(self.info.get("seq_len", 0)) or 2048


def export_packed(run: FinishedRun, out: Path, ternary: str = TRITS) -> None:
    """Write ``run``'s final model into the folder ``out`` (must not exist yet)."""
    from safetensors.torch import save_file

    config = run.config
    state = run.weights()
    tensors: dict[str, torch.Tensor] = {}
    layers: dict[str, dict[str, Any]] = {}
    quantized = {name[: -len(_SCALE)] for name in state if name.endswith(_SCALE)}
    for name, tensor in state.items():
        if config.model.tie_embeddings and name == "output.weight":
            continue  # the token embedding table, stored once
        layer = name[: -len(_WEIGHT)] if name.endswith(_WEIGHT) else None
        if layer in quantized:
            fmt = layer_format(config, layer)
            scale = state[layer + _SCALE]
            if fmt.element is not None:
                stored, spec = _float_layer(float_codes(tensor, scale, fmt), fmt)
            else:
                stored, spec = _int_layer(tensor, scale, fmt, ternary)
            tensors.update({layer + suffix: t.contiguous() for suffix, t in stored.items()})
            layers[layer] = {"shape": list(tensor.shape), **spec}
        elif not name.endswith(_SCALE):
            tensors[name] = tensor.detach().contiguous()
    info = {
        "format": FORMAT,
        "version": VERSION,
        "model": dataclasses.asdict(config.model),
        "vocab_size": int(state["tok_embeddings.weight"].shape[0]),
        "bits": config.bits,
        "quant_format": config.quant.format,
        "seq_len": config.data.seq_len,
        "end_token": run.end_token,
        "run_key": run.run_key,
        "final_val_loss": run.final_val_loss,
    }
    with staged(out) as folder:
        metadata = {"format": FORMAT, **_layer_meta(layers)}
        save_file(tensors, folder / WEIGHTS_FILE, metadata=metadata)
        (folder / CONFIG_FILE).write_text(json.dumps(info, indent=2))
        shutil.copyfile(run.tokenizer_path, folder / TOKENIZER_FILE)


def load(folder: Path | str) -> Exported:
    """The model of a packed export folder (its weights dequantized), on the CPU, in eval mode."""
    from safetensors import safe_open

    folder = Path(folder)
    info = read_info(folder)
    if info.get("format") != FORMAT:
        raise ExportError(f"{folder} is not a {FORMAT} export (its {CONFIG_FILE} says otherwise)")
    if int(info.get("version", 1)) > VERSION:
        raise ExportError(
            f"{folder} is a {FORMAT} export of version {info['version']}; this qat.export reads "
            f"up to version {VERSION}: update qat"
        )
    path = folder / WEIGHTS_FILE
    with safe_open(str(path), framework="pt") as handle:
        layers = json.loads((handle.metadata() or {}).get("layers", "{}"))
        stored = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    state: dict[str, torch.Tensor] = {}
    for name, tensor in stored.items():
        if name.endswith((_CODES, _SCALE, _BLOCK_SCALE, _TENSOR_SCALE)):
            continue
        state[name] = tensor
    for layer, spec in layers.items():
        state[layer + _WEIGHT] = _layer_weight(stored, layer, spec)
    model_config = ModelConfig(**info["model"])
    if model_config.tie_embeddings:
        state["output.weight"] = state["tok_embeddings.weight"]
    model = Transformer(model_config, int(info["vocab_size"]))
    model.load_state_dict(state)
    model.eval()
    return Exported(model, Tokenizer.from_file(str(folder / TOKENIZER_FILE)), info)


def _int_layer(
    weight: torch.Tensor, scale: torch.Tensor, fmt: QuantFormat, ternary: str
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    codes, alpha = quant_codes(weight, scale, fmt)
    encoding = ternary if fmt.name == "ternary" else encoding_name(int(fmt.bits))
    spec = {"bits": fmt.bits, "format": fmt.name, "encoding": encoding}
    return {_CODES: pack(codes, encoding), _SCALE: alpha}, spec


def _float_layer(
    codes: FloatCodes, fmt: QuantFormat
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors and the metadata of a float-format layer: the metadata alone says how to
    decode the bits (element layout, block size, scale encoding), without qat at hand."""
    enc = fmt.element
    assert enc is not None  # export_packed passes float formats only
    encoding = encoding_name(enc.bits)
    stored = {_CODES: pack(codes.elements, encoding), _SCALE: codes.alpha}
    spec: dict[str, Any] = {
        "bits": fmt.bits,
        "format": fmt.name,
        "encoding": encoding,
        "element": _element_spec(fmt),
    }
    if fmt.blocks is not None:
        assert codes.block_scales is not None  # float_codes gives a block-scaled format them
        stored[_BLOCK_SCALE] = codes.block_scales
        spec["block_size"] = fmt.blocks.block_size
        spec["block_scale"] = fmt.blocks.scale
        if codes.tensor_scale is not None:
            stored[_TENSOR_SCALE] = codes.tensor_scale
    return stored, spec


def _element_spec(fmt: QuantFormat) -> dict[str, Any]:
    enc = fmt.element
    assert enc is not None
    return {
        "name": enc.name,
        "exp_bits": enc.exp_bits,
        "man_bits": enc.man_bits,
        "bias": enc.bias,
        "max_normal": enc.max_normal,
    }


def _layer_weight(
    stored: dict[str, torch.Tensor], layer: str, spec: dict[str, Any]
) -> torch.Tensor:
    """The dequantized weight of one layer of the metadata's table."""
    out_features, in_features = spec["shape"]
    codes = unpack(stored[layer + _CODES], spec["encoding"], out_features * in_features)
    codes = codes.reshape(out_features, in_features)
    alpha = stored[layer + _SCALE]
    fmt = FLOAT_FORMATS.get(spec["format"])
    if fmt is None:
        return dequantize(codes, alpha, format_for_bits(spec["bits"]))
    if spec.get("element") != _element_spec(fmt):
        raise ExportError(
            f"layer {layer}: its {spec['format']} element {spec.get('element')} is not this "
            f"qat's {_element_spec(fmt)}"
        )
    block = stored.get(layer + _BLOCK_SCALE)
    float_layer = FloatCodes(codes, alpha, block, stored.get(layer + _TENSOR_SCALE))
    return dequantize_float(float_layer, fmt)


def read_info(folder: Path) -> dict[str, Any]:
    path = folder / CONFIG_FILE
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        raise ExportError(f"{folder} is not an export folder: cannot read {path}") from None
    if not isinstance(info, dict):
        raise ExportError(f"{path} is not a JSON object")
    return info


def _layer_meta(layers: dict[str, dict[str, Any]]) -> dict[str, str]:
    # safetensors metadata is str → str: the per-layer table travels as one JSON string.
    return {"version": str(VERSION), "layers": json.dumps(layers, sort_keys=True)}
