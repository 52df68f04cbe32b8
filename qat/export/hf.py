"""The hf format: a Llama folder (config.json, model.safetensors of the dequantized weights,
tokenizer files) that transformers loads offline with AutoModelForCausalLM and AutoTokenizer.
The architecture mapping is qat.hf_llama's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer

from qat.export.errors import ExportError
from qat.export.run import FinishedRun
from qat.export.staging import staged
from qat.export.weights import dequantized_state
from qat.hf_llama import llama_config, to_hf_state
from qat.pretrained import load_tokenizer, strip_prefix


def export_hf(run: FinishedRun, out: Path) -> None:
    """Write ``run``'s final model (fake-quantized weights, dequantized) as a Llama folder."""
    config = run.config
    state = dequantized_state(run.weights(), config)
    vocab_size = int(state["tok_embeddings.weight"].shape[0])
    end_id = Tokenizer.from_file(str(run.tokenizer_path)).token_to_id(run.end_token)
    if end_id is None:
        raise ExportError(f"tokenizer {run.tokenizer_path} lacks its end token {run.end_token!r}")
    hf_config = llama_config(config.model, vocab_size, config.data.seq_len, end_id)
    with staged(out) as folder:
        save_llama(hf_config, to_hf_state(state, config.model), folder)
        if config.init.source is not None:  # the pretrained model's own tokenizer files
            load_tokenizer(strip_prefix(config.init.source)).save_pretrained(folder)
        else:
            save_tokenizer(run.tokenizer_path, run.end_token, folder)


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


def save_tokenizer(tokenizer_path: Path, end_token: str, folder: Path) -> None:
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=str(tokenizer_path), eos_token=end_token, bos_token=end_token
    )
    tokenizer.save_pretrained(folder)
