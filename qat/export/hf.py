"""The hf format: a Llama folder (config.json, model.safetensors of the dequantized weights,
tokenizer files) that transformers loads offline with AutoModelForCausalLM and AutoTokenizer.
The architecture mapping is qat.hf_llama's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from qat.data.tokenizer import EOT, eot_id, load_tokenizer
from qat.export.run import FinishedRun
from qat.export.staging import staged
from qat.export.weights import dequantized_state
from qat.hf_llama import llama_config, to_hf_state


def export_hf(run: FinishedRun, out: Path) -> None:
    """Write ``run``'s final model (fake-quantized weights, dequantized) as a Llama folder."""
    config = run.config
    state = dequantized_state(run.weights(), config.bits)
    vocab_size = int(state["tok_embeddings.weight"].shape[0])
    tokenizer = load_tokenizer(run.tokenizer_path)
    hf_config = llama_config(config.model, vocab_size, config.data.seq_len, eot_id(tokenizer))
    with staged(out) as folder:
        save_llama(hf_config, to_hf_state(state, config.model), folder)
        save_tokenizer(run.tokenizer_path, folder)


def save_llama(hf_config: Any, state: dict[str, torch.Tensor], folder: Path) -> None:
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM(hf_config)
    if hf_config.tie_word_embeddings:
        state = {k: v for k, v in state.items() if k != "lm_head.weight"}
    missing, unexpected = model.load_state_dict(state, strict=False)
    # A tied head is the embedding table, not a weight of its own.
    missing = [m for m in missing if not (hf_config.tie_word_embeddings and m == "lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"Llama mapping mismatch: missing {missing}, unexpected {unexpected}")
    model.save_pretrained(folder)


def save_tokenizer(tokenizer_path: Path, folder: Path) -> None:
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=str(tokenizer_path), eos_token=EOT, bos_token=EOT, unk_token=None
    )
    tokenizer.save_pretrained(folder)
