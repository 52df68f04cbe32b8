"""Small Hugging Face models the tests make: random LlamaForCausalLM (or another architecture)
saved with a real byte-level BPE tokenizer into a temporary folder; nothing from a hub."""

from __future__ import annotations

from pathlib import Path

import torch

TEXT = [
    "The quick brown fox jumps over the lazy dog. " * 3,
    "Quantization-aware training keeps a float copy of every weight. " * 3,
    "A pretrained model has already paid for its full-precision phase. " * 3,
]


def save_tokenizer(folder: Path) -> None:
    from transformers import PreTrainedTokenizerFast

    from qat.data.tokenizer import EOT, train_tokenizer
    from qat.data.tokenizer import save_tokenizer as save_json

    path = folder / "bpe.json"
    folder.mkdir(parents=True, exist_ok=True)
    save_json(train_tokenizer(TEXT * 20, vocab_size=300), path)
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(path), eos_token=EOT, bos_token=EOT)
    tokenizer.save_pretrained(folder)
    path.unlink()


def tiny_llama(folder: Path, tied: bool = True, kv_heads: int = 2, tokenizer: bool = True) -> Path:
    """A random 2-layer Llama (vocab 300, GQA) saved to ``folder`` in float32."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=300,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=kv_heads,
        max_position_embeddings=64,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 5000.0},
        tie_word_embeddings=tied,
        bos_token_id=0,
        eos_token_id=0,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # norms away from 1, so a wrongly mapped norm shows
        for name, param in model.named_parameters():
            if "norm" in name:
                param.uniform_(0.5, 1.5)
    model.save_pretrained(folder)
    if tokenizer:
        save_tokenizer(folder)
    return folder


def tiny_gpt2(folder: Path) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=300)).save_pretrained(
        folder
    )
    save_tokenizer(folder)
    return folder
