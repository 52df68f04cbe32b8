"""``python -m qat.generate DIR --prompt "..."``: sample text from an exported model (a packed
folder or a Llama folder), on the CPU or a GPU.

Sampling: the logits of the last position divided by the temperature, cut to the top k, drawn
from a generator seeded with --seed (temperature 0: the most likely token). Generation stops at
--max-tokens or the end-of-text token.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from qat.errors import QatError, report
from qat.model import Transformer


@dataclass
class TextModel:
    model: Transformer
    encode: Callable[[str], list[int]]
    decode: Callable[[list[int]], str]
    eos_id: int | None
    context: int  # the longest sequence fed to the model


def open_folder(folder: Path) -> TextModel:
    """A packed export folder, or a Llama folder transformers can read."""
    from qat.export.packed import FORMAT, load, read_info
    from qat.pretrained import load_pretrained

    if read_info(folder).get("format") == FORMAT:
        exported = load(folder)
        tok = exported.tokenizer
        return TextModel(
            exported.model,
            lambda text: tok.encode(text, add_special_tokens=False).ids,
            tok.decode,
            exported.end_id,
            exported.seq_len,
        )
    pretrained = load_pretrained(str(folder))
    hf_tok = pretrained.tokenizer
    return TextModel(
        pretrained.model(),
        lambda text: list(hf_tok.encode(text, add_special_tokens=False)),
        hf_tok.decode,
        hf_tok.eos_token_id,
        pretrained.context,
    )


@torch.no_grad()
def sample(
    model: Transformer,
    prompt: list[int],
    max_tokens: int,
    temperature: float = 1.0,
    top_k: int = 0,
    seed: int = 0,
    context: int = 2048,
    eos_id: int | None = None,
) -> list[int]:
    """The generated ids (the prompt not included)."""
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    ids = torch.tensor([prompt], device=device)
    out: list[int] = []
    for _ in range(max_tokens):
        logits = model(ids[:, -context:])[0, -1].float()
        if temperature <= 0:
            token = int(logits.argmax())
        else:
            logits = logits / temperature
            if 0 < top_k < logits.numel():
                cutoff = torch.topk(logits, top_k).values[-1]
                logits = logits.masked_fill(logits < cutoff, float("-inf"))
            probs = torch.softmax(logits, dim=-1)
            token = int(torch.multinomial(probs, 1, generator=generator))
        if token == eos_id:
            break
        out.append(token)
        ids = torch.cat([ids, torch.tensor([[token]], device=device)], dim=1)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qat.generate", description=__doc__)
    parser.add_argument("folder", type=Path, help="an export folder (packed or hf)")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--max-tokens", type=int, default=40)
    parser.add_argument("--temperature", type=float, default=0.8, help="0: greedy")
    parser.add_argument("--top-k", type=int, default=50, help="0: no cut")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto (a GPU if present), cpu, cuda")
    args = parser.parse_args(argv)
    try:
        text_model = open_folder(args.folder)
        device = _device(args.device)
        prompt = text_model.encode(args.prompt)
        if not prompt:
            raise QatError("--prompt encodes to no tokens; give some text")
        ids = sample(
            text_model.model.to(device),
            prompt,
            args.max_tokens,
            args.temperature,
            args.top_k,
            args.seed,
            text_model.context,
            text_model.eos_id,
        )
    except QatError as error:
        return report(error)
    print(args.prompt + text_model.decode(ids))
    return 0


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as error:
        raise QatError(f"--device={name!r} is not usable here: {error}") from None
    return device


if __name__ == "__main__":
    sys.exit(main())
