"""Our Transformer ↔ transformers' LlamaForCausalLM: configs, parameter names, RoPE layout.

The two are the same function once three things are mapped:

- RoPE: ours rotates interleaved channel pairs (2i, 2i+1) of each head, Llama's rotate_half
  pairs channel i with i + head_dim/2 (both with frequency θ^(-2i/head_dim)). The rows of the q
  and k projections are permuted within each head to move from one layout to the other; the
  attention scores are unchanged because q and k are permuted alike.
- Tied embeddings: ``tie_embeddings`` ↔ ``tie_word_embeddings`` (the LM head shares the
  embedding table, stored once).
- Norms: both are RMSNorm computed in float32, ε inside the square root (``norm_eps`` ↔
  ``rms_norm_eps``), a weight and no bias. The MLP is SwiGLU (w1 = gate, w3 = up, w2 = down),
  no bias anywhere, attention scaled by head_dim^-1/2.
"""

from __future__ import annotations

from typing import Any

import torch

from qat.config import ModelConfig
from qat.errors import ConfigError

_BLOCK = {
    "attention.wq": "self_attn.q_proj",
    "attention.wk": "self_attn.k_proj",
    "attention.wv": "self_attn.v_proj",
    "attention.wo": "self_attn.o_proj",
    "feed_forward.w1": "mlp.gate_proj",
    "feed_forward.w2": "mlp.down_proj",
    "feed_forward.w3": "mlp.up_proj",
    "attention_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_TOP = {"tok_embeddings": "model.embed_tokens", "norm": "model.norm", "output": "lm_head"}


def hf_name(name: str) -> str:
    """Our parameter name → Llama's (``layers.0.attention.wq.weight`` →
    ``model.layers.0.self_attn.q_proj.weight``)."""
    module, _, leaf = name.rpartition(".")
    if module in _TOP:
        return f"{_TOP[module]}.{leaf}"
    _, index, rest = module.split(".", 2)
    return f"model.layers.{index}.{_BLOCK[rest]}.{leaf}"


def to_hf_state(state: dict[str, torch.Tensor], model: ModelConfig) -> dict[str, torch.Tensor]:
    """Our state_dict (plain weights, no quantizer scales) under Llama's names and layout."""
    heads = {"attention.wq": model.n_heads, "attention.wk": model.n_kv_heads or model.n_heads}
    out = {}
    for name, tensor in state.items():
        rest = name.split(".", 2)[-1].rsplit(".", 1)[0]
        if name.startswith("layers.") and rest in heads:
            tensor = _interleaved_to_halves(tensor, heads[rest])
        out[hf_name(name)] = tensor
    return out


def from_hf_state(state: dict[str, torch.Tensor], model: ModelConfig) -> dict[str, torch.Tensor]:
    """A Llama state_dict under our names and RoPE layout (the inverse of to_hf_state)."""
    ours = {hf_name(name): name for name in _our_names(model)}
    missing = sorted(set(ours) - set(state))
    if missing:
        raise ConfigError(f"the Llama weights lack {', '.join(missing[:3])}")
    heads = {"q_proj": model.n_heads, "k_proj": model.n_kv_heads or model.n_heads}
    out = {}
    for hf, name in ours.items():
        tensor = state[hf]
        projection = hf.rsplit(".", 2)[-2]
        if projection in heads:
            tensor = _halves_to_interleaved(tensor, heads[projection])
        out[name] = tensor
    if model.tie_embeddings:  # our Transformer's state_dict names the shared table twice
        out["output.weight"] = out["tok_embeddings.weight"]
    return out


def llama_config(model: ModelConfig, vocab_size: int, seq_len: int, eos_id: int) -> Any:
    """The transformers LlamaConfig of our model shape."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=model.dim,
        intermediate_size=model.ffn_dim,
        num_hidden_layers=model.n_layers,
        num_attention_heads=model.n_heads,
        num_key_value_heads=model.n_kv_heads or model.n_heads,
        head_dim=model.dim // model.n_heads,
        hidden_act="silu",
        max_position_embeddings=seq_len,
        rms_norm_eps=model.norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": model.rope_theta},
        tie_word_embeddings=model.tie_embeddings,
        attention_bias=False,
        mlp_bias=False,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        initializer_range=model.init_std,
    )


def _our_names(model: ModelConfig) -> list[str]:
    names = ["tok_embeddings.weight", "norm.weight"]
    if not model.tie_embeddings:
        names.append("output.weight")
    for index in range(model.n_layers):
        names += [f"layers.{index}.{module}.weight" for module in _BLOCK]
    return names


def _interleaved_to_halves(weight: torch.Tensor, heads: int) -> torch.Tensor:
    rows, cols = weight.shape
    return weight.reshape(heads, rows // heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def _halves_to_interleaved(weight: torch.Tensor, heads: int) -> torch.Tensor:
    rows, cols = weight.shape
    return weight.reshape(heads, 2, rows // heads // 2, cols).transpose(1, 2).reshape(rows, cols)
