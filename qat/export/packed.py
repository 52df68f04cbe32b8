"""The packed format: a folder with

- ``model.safetensors``: each quantized Linear as ``<name>.codes`` (its integer codes,
  bit-packed, uint8) and ``<name>.scale`` (its per-output-channel α, float32 [out, 1]); every
  tensor kept out of quantization (embeddings, norms, an untied output head) as it was trained;
  the header's metadata says how each layer is encoded;
- ``config.json``: the model shape, the vocabulary, the bit width and where the model came from;
- ``tokenizer.json``: the run's tokenizer.

Dequantizing gives back the fake-quantized weights bit for bit (qat.quant.codes), so the loaded
model computes exactly what the run evaluated.
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
from qat.export.packing import TRITS, encoding_name, pack, unpack
from qat.export.run import FinishedRun
from qat.export.staging import staged
from qat.export.weights import layer_format
from qat.model import Transformer
from qat.quant import format_for_bits
from qat.quant.codes import dequantize, quant_codes

FORMAT = "qat-packed"
VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"
_SCALE = ".scale"
_CODES = ".codes"
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
            codes, alpha = quant_codes(tensor, state[layer + _SCALE], fmt)
            encoding = ternary if fmt.name == "ternary" else encoding_name(int(fmt.bits))
            tensors[layer + _CODES] = pack(codes, encoding)
            tensors[layer + _SCALE] = alpha.contiguous()
            layers[layer] = {
                "shape": list(tensor.shape),
                "bits": fmt.bits,
                "format": fmt.name,
                "encoding": encoding,
            }
        elif not name.endswith(_SCALE):
            tensors[name] = tensor.detach().contiguous()
    info = {
        "format": FORMAT,
        "version": VERSION,
        "model": dataclasses.asdict(config.model),
        "vocab_size": int(state["tok_embeddings.weight"].shape[0]),
        "bits": config.bits,
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
    path = folder / WEIGHTS_FILE
    with safe_open(str(path), framework="pt") as handle:
        layers = json.loads((handle.metadata() or {}).get("layers", "{}"))
        stored = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    state: dict[str, torch.Tensor] = {}
    for name, tensor in stored.items():
        if name.endswith((_CODES, _SCALE)):
            continue
        state[name] = tensor
    for layer, spec in layers.items():
        out_features, in_features = spec["shape"]
        codes = unpack(stored[layer + _CODES], spec["encoding"], out_features * in_features)
        fmt = format_for_bits(spec["bits"])
        weight = dequantize(codes.reshape(out_features, in_features), stored[layer + _SCALE], fmt)
        state[layer + _WEIGHT] = weight
    model_config = ModelConfig(**info["model"])
    if model_config.tie_embeddings:
        state["output.weight"] = state["tok_embeddings.weight"]
    model = Transformer(model_config, int(info["vocab_size"]))
    model.load_state_dict(state)
    model.eval()
    return Exported(model, Tokenizer.from_file(str(folder / TOKENIZER_FILE)), info)


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
