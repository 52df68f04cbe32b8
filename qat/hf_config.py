"""A Hugging Face model's config, read offline and checked: is it a Llama that our Transformer
computes the same way, and what is its shape (as ModelConfig's fields, so that qat.config can
use it without importing the model code)."""

from __future__ import annotations

import functools
from typing import Any

from qat.errors import ConfigError


@functools.cache
def read_shape(source: str) -> tuple[dict[str, Any], int, int]:
    """(ModelConfig fields, vocab size, context length) of the model ``source`` (a local folder,
    or a hub name already in the local cache); ConfigError in one line otherwise."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError, KeyError) as error:
        raise ConfigError(
            f"cannot read the Hugging Face model {source}: {first_line(error)}"
        ) from None
    fields, vocab_size = shape_fields(config, source)
    return fields, vocab_size, int(getattr(config, "max_position_embeddings", 0) or 2048)


@functools.cache
def check_tokenizer(source: str) -> None:
    """ConfigError in one line unless ``source`` has a tokenizer transformers can load offline:
    a pretrained start re-tokenizes its data with it, so a run without one must not begin."""
    from transformers import AutoTokenizer

    try:
        AutoTokenizer.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ConfigError(f"{source} has no usable tokenizer: {first_line(error)}") from None


def shape_fields(config: Any, name: str) -> tuple[dict[str, Any], int]:
    """ModelConfig fields and vocab size of a transformers config; ConfigError for anything our
    Transformer does not compute the same way."""
    kind = getattr(config, "model_type", None)
    if kind != "llama":
        raise ConfigError(
            f"{name} is a {kind!r} model; only the Llama architecture (model_type 'llama') "
            "can be imported"
        )
    # transformers ≥ 5 keeps RoPE settings in rope_parameters, 4.x in rope_theta/rope_scaling.
    rope = dict(
        getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    )
    theta = rope.get("rope_theta", getattr(config, "rope_theta", None))
    head_dim = config.hidden_size // config.num_attention_heads
    checks = {
        "hidden_act": (config.hidden_act, "silu"),
        "attention_bias": (bool(config.attention_bias), False),
        "mlp_bias": (bool(getattr(config, "mlp_bias", False)), False),
        "rope type": (rope.get("rope_type", rope.get("type", "default")), "default"),
        "head_dim": (getattr(config, "head_dim", None) or head_dim, head_dim),
    }
    for what, (found, wanted) in checks.items():
        if found != wanted:
            raise ConfigError(f"{name}: {what}={found!r} is not supported (only {wanted!r})")
    if theta is None:
        raise ConfigError(f"{name}: the config states no rope_theta")
    fields = {
        "name": f"hf-{name.rstrip('/').rsplit('/', 1)[-1]}",
        "dim": int(config.hidden_size),
        "n_layers": int(config.num_hidden_layers),
        "n_heads": int(config.num_attention_heads),
        "ffn_dim": int(config.intermediate_size),
        "n_kv_heads": int(config.num_key_value_heads or config.num_attention_heads),
        "norm_eps": float(config.rms_norm_eps),
        "rope_theta": float(theta),
        "init_std": float(getattr(config, "initializer_range", 0.02)),
        "tie_embeddings": bool(config.tie_word_embeddings),
    }
    return fields, int(config.vocab_size)


def first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
