"""Export a finished run's quantized model: ``packed`` (bit-packed integer codes or a float
format's element bit patterns, per-channel and block scales, safetensors) or ``hf`` (a Llama
folder for transformers); ``load`` reads a packed one back. See docs/export.md."""

from qat.export.errors import ExportError
from qat.export.packed import Exported, load

__all__ = ["ExportError", "Exported", "load"]
