"""Byte-level BPE tokenizer: train, save, load, and encode documents into one id stream."""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from qat.data.errors import DataError

EOT = "<|endoftext|>"
# Byte-level BPE starts from all 256 byte symbols, plus the end-of-text token.
MIN_VOCAB_SIZE = 257
# A pair seen once is noise, not a reusable unit; this also keeps tiny corpora well behaved.
_MIN_PAIR_FREQUENCY = 2


@dataclass(frozen=True)
class GivenTokenizer:
    """A ready tokenizer to encode with instead of training one (a pretrained model's own)."""

    name: str  # recorded in meta.json, e.g. hf:<model>
    tokenizer: Tokenizer
    end_token: str  # written after every document

    @property
    def end_id(self) -> int:
        token_id = self.tokenizer.token_to_id(self.end_token)
        if token_id is None:
            raise DataError(f"tokenizer {self.name} has no token {self.end_token!r}")
        return token_id


def check_vocab_size(vocab_size: int) -> None:
    if vocab_size < MIN_VOCAB_SIZE:
        raise DataError(
            f"vocab_size {vocab_size} is too small; byte-level BPE needs >= {MIN_VOCAB_SIZE}"
        )


def train_tokenizer(docs: Iterable[str], vocab_size: int = 8192) -> Tokenizer:
    """Train byte-level BPE on ``docs``; same docs in the same order give the same tokenizer.

    The vocabulary may end up smaller than ``vocab_size`` when the corpus runs out of pairs
    seen at least twice; ids always stay below ``vocab_size``.
    """
    check_vocab_size(vocab_size)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=_MIN_PAIR_FREQUENCY,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(docs, trainer=trainer)
    return tokenizer


def save_tokenizer(tokenizer: Tokenizer, path: Path) -> None:
    tokenizer.save(str(path))


def load_tokenizer(path: Path) -> Tokenizer:
    """Load a tokenizer JSON written by :func:`save_tokenizer`."""
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception for missing or malformed files
        raise DataError(f"cannot load tokenizer {path}: {e}") from None
    eot_id(tokenizer, path)
    return tokenizer


def eot_id(tokenizer: Tokenizer, path: Path | None = None) -> int:
    """Id of the end-of-text token; DataError if the tokenizer lacks it."""
    token_id = tokenizer.token_to_id(EOT)
    if token_id is None:
        where = f" {path}" if path is not None else ""
        raise DataError(f"tokenizer{where} has no {EOT} token; it was not made by this pipeline")
    return token_id


def encode_documents(
    tokenizer: Tokenizer, docs: Sequence[str], end: int | None = None
) -> np.ndarray:
    """Ids of ``docs`` concatenated, each document followed by the end-of-text token (``end``,
    or this pipeline's <|endoftext|>).

    Documents are tokenized in parallel on all cores; the ``_fast`` variant skips the character
    offsets, which are never used here.
    """
    end = eot_id(tokenizer) if end is None else end
    encodings = tokenizer.encode_batch_fast(list(docs), add_special_tokens=False)
    parts = [np.append(np.asarray(e.ids, dtype=np.int64), end) for e in encodings]
    return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)
