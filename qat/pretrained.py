"""A pretrained Llama-architecture Hugging Face model (a local folder, or a hub name already in
the local cache) as our Transformer, with its own tokenizer.

Everything is read offline; a model our Transformer does not compute the same way (another
architecture, biases, scaled RoPE), or one without a tokenizer, is refused with one line. The
mapping is qat.hf_llama's; after import the logits equal the transformers model's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from qat.config import ModelConfig
from qat.data.tokenizer import GivenTokenizer
from qat.errors import ConfigError
from qat.hf_config import first_line, read_shape
from qat.hf_llama import from_hf_state
from qat.model import Transformer

HF_PREFIX = "hf:"


@dataclass
class Pretrained:
    source: str
    shape: ModelConfig
    vocab_size: int
    tokenizer: Any  # a transformers PreTrainedTokenizer
    weights: dict[str, torch.Tensor]  # our names and layout
    context: int  # max_position_embeddings

    @property
    def eos_id(self) -> int:
        eos = self.tokenizer.eos_token_id
        if eos is None:
            raise ConfigError(f"{self.source}'s tokenizer has no end-of-sequence token")
        return int(eos)

    def model(self) -> Transformer:
        """A fresh Transformer holding the pretrained weights, in eval mode, on the CPU."""
        model = Transformer(self.shape, self.vocab_size)
        model.load_state_dict(self.weights)
        return model.eval()


def strip_prefix(init: str) -> str:
    """``hf:<name or folder>`` → the name or folder; ConfigError for anything else."""
    if not init.startswith(HF_PREFIX) or not init[len(HF_PREFIX) :]:
        raise ConfigError(f"init={init!r}: expected hf:<model name or local folder>")
    return init[len(HF_PREFIX) :]


def read_config(source: str) -> tuple[ModelConfig, int, int]:
    """The model shape, vocabulary and context length of ``source``, checked (its weights are
    not read)."""
    fields, vocab_size, context = read_shape(source)
    return ModelConfig(**fields), vocab_size, context


def load_tokenizer(source: str) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ConfigError(f"{source} has no usable tokenizer: {first_line(error)}") from None


def given_tokenizer(init_source: str) -> GivenTokenizer:
    """The tokenizer of ``hf:<source>`` for the data pipeline: its fast (tokenizers) core,
    documents ended by its end-of-sequence token."""
    source = strip_prefix(init_source)
    tokenizer = load_tokenizer(source)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ConfigError(f"{source}'s tokenizer has no fast (tokenizers) version to encode with")
    if tokenizer.eos_token is None:
        raise ConfigError(f"{source}'s tokenizer has no end-of-sequence token to end documents")
    return GivenTokenizer(init_source, backend, str(tokenizer.eos_token))


def load_pretrained(source: str) -> Pretrained:
    """Read ``source``'s config, tokenizer and weights (float32)."""
    from transformers import AutoModelForCausalLM

    shape, vocab_size, context = read_config(source)
    tokenizer = load_tokenizer(source)
    try:
        hf = AutoModelForCausalLM.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError) as error:
        raise ConfigError(f"cannot read {source}'s weights: {first_line(error)}") from None
    # float32 whatever the stored dtype: QAT keeps float32 master weights.
    state = {name: tensor.float() for name, tensor in hf.state_dict().items()}
    weights = from_hf_state(state, shape)
    return Pretrained(source, shape, vocab_size, tokenizer, weights, context)
