"""Batches of (input, target) token windows from a shard, with an exact, resumable cursor.

Window ``i`` of a shard holds tokens ``[i * seq_len, i * seq_len + seq_len + 1)``: windows do not
overlap except for one boundary token, so every token after the first is a target exactly once
per epoch. There are ``(n_tokens - 1) // seq_len`` windows; the tail that does not fill another
one (fewer than ``seq_len`` tokens) is dropped.

Training order: epoch ``e`` visits all windows in the permutation drawn by a PCG64 generator
seeded with ``(seed, e)``. The permutations of epochs 0, 1, 2, ... are laid end to end into one
endless stream, and batch ``k`` is stream entries ``[k * batch_size, (k + 1) * batch_size)``. So
a batch that reaches the end of an epoch is completed from the start of the next one (and may
then hold a window twice), and no window is ever skipped. The cursor is the pair (epoch,
position in that epoch's permutation) of the next stream entry.

``fraction`` < 1 trains on part of the shard, chosen by ``part``:

- ``leading``: the shard's first ``floor(fraction * n_tokens)`` tokens; the windows are those of
  that prefix, so no token after it is ever read. A shard stored in corpus order then trains on
  the sources at its start only.
- ``spread``: ``floor(fraction * n_windows)`` of the shard's windows, drawn without replacement
  by a PCG64 generator seeded with PART_SEED (the same part for every training seed) and kept
  in shard order, so the part has the whole shard's mix of sources.
"""

import math
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import numpy as np
import torch

from qat.config import TRAIN_PARTS
from qat.data.errors import DataError
from qat.data.shards import read_shard

Batch = tuple[torch.Tensor, torch.Tensor]
_COUNT_CHUNK = 1 << 24
# Fixed, not the run's seed: every seed of a cell trains on the same part, so the seeds' spread
# is training noise only.
PART_SEED = 20251


def _n_windows(tokens: np.ndarray, seq_len: int, path: Path, what: str = "") -> int:
    if seq_len < 1:
        raise DataError(f"seq_len {seq_len} is out of range; allowed >= 1")
    n_windows = (len(tokens) - 1) // seq_len
    if n_windows < 1:
        raise DataError(
            f"shard {path}{what} has {len(tokens)} tokens, fewer than one window of "
            f"seq_len + 1 = {seq_len + 1}"
        )
    return n_windows


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise DataError(f"batch_size {batch_size} is out of range; allowed >= 1")


def _gather(tokens: np.ndarray, windows: np.ndarray, seq_len: int) -> Batch:
    offsets = windows[:, None] * seq_len + np.arange(seq_len + 1)
    rows = torch.from_numpy(tokens[offsets].astype(np.int64))
    # Separate contiguous copies: overlapping strided views would break `.view(-1)` in a loss.
    return rows[:, :-1].contiguous(), rows[:, 1:].contiguous()


class TokenLoader:
    """Endless shuffled training batches ``(x, y)``, ``y`` being ``x`` shifted left by one.

    Both are ``torch.long`` tensors of shape ``[batch_size, seq_len]``.
    """

    def __init__(
        self,
        train_shard_path: Path,
        batch_size: int,
        seq_len: int,
        seed: int,
        vocab_size: int | None = None,
        fraction: float = 1.0,
        part: str = "leading",
    ) -> None:
        _check_batch_size(batch_size)
        if not 0.0 < fraction <= 1.0:
            raise DataError(f"fraction {fraction} is out of range; allowed (0, 1]")
        if part not in TRAIN_PARTS:
            raise DataError(f"part {part!r} is unknown; allowed: {', '.join(TRAIN_PARTS)}")
        self.path = Path(train_shard_path)
        tokens = read_shard(self.path, expected_vocab_size=vocab_size)
        # The shard's window of each loader window: all of them but for a spread part.
        self.windows: np.ndarray | None = None
        if fraction == 1.0:
            self.tokens = tokens
            self.n_windows = _n_windows(tokens, seq_len, self.path)
        elif part == "leading":
            # A view of the memory map: the rest of the shard is never touched.
            self.tokens = tokens[: math.floor(fraction * len(tokens))]
            self.n_windows = _n_windows(
                self.tokens, seq_len, self.path, f" (its first {fraction:g})"
            )
        else:
            self.tokens = tokens
            n_all = _n_windows(tokens, seq_len, self.path)
            self.n_windows = math.floor(fraction * n_all)
            if self.n_windows < 1:
                raise DataError(
                    f"shard {self.path} has {n_all} windows of seq_len {seq_len}; "
                    f"a fraction {fraction:g} of them is none"
                )
            rng = np.random.Generator(np.random.PCG64(PART_SEED))
            self.windows = np.sort(rng.choice(n_all, self.n_windows, replace=False))
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.seed = seed
        self.epoch = 0
        self.position = 0
        self._order_epoch = -1
        self._order = np.empty(0, dtype=np.int64)

    @property
    def tokens_per_batch(self) -> int:
        """Target tokens per batch."""
        return self.batch_size * self.seq_len

    def epochs_for(self, tokens: int) -> float:
        """How many times a budget of ``tokens`` target tokens goes through the data."""
        return tokens / (self.n_windows * self.seq_len)

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._order_epoch:
            rng = np.random.Generator(np.random.PCG64([self.seed, epoch]))
            self._order = rng.permutation(self.n_windows)
            self._order_epoch = epoch
        return self._order

    def next_batch(self) -> Batch:
        windows = []
        needed = self.batch_size
        while needed:
            take = min(needed, self.n_windows - self.position)
            windows.append(self._permutation(self.epoch)[self.position : self.position + take])
            needed -= take
            self.position += take
            if self.position == self.n_windows:
                self.epoch, self.position = self.epoch + 1, 0
        picked = np.concatenate(windows)
        if self.windows is not None:
            picked = self.windows[picked]
        return _gather(self.tokens, picked, self.seq_len)

    def __iter__(self) -> Iterator[Batch]:
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict[str, int]:
        """The cursor, as plain ints (JSON-safe)."""
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Resume at a cursor from :meth:`state_dict`; the following batches are then exactly
        those an uninterrupted loader (same shard, batch_size, seq_len, seed) would give."""
        try:
            epoch, position = state["epoch"], state["position"]
        except (KeyError, TypeError):
            raise DataError(f"loader state {state!r} needs keys 'epoch' and 'position'") from None
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (epoch, position)):
            raise DataError(f"loader state {state!r}: epoch and position must be ints")
        if epoch < 0 or not 0 <= position < self.n_windows:
            raise DataError(
                f"loader state {state!r} is out of range for {self.path}: "
                f"allowed epoch >= 0 and 0 <= position < {self.n_windows} windows"
            )
        self.epoch, self.position = epoch, position


def eval_batches(
    val_shard_path: Path,
    batch_size: int,
    seq_len: int,
    max_tokens: int,
    vocab_size: int | None = None,
) -> Iterator[Batch]:
    """The first windows of the validation shard in order, at most ``max_tokens`` targets.

    Deterministic: the same arguments always give the same batches; the last may be smaller.
    """
    _check_batch_size(batch_size)
    path = Path(val_shard_path)
    tokens = read_shard(path, expected_vocab_size=vocab_size)
    n_windows = min(_n_windows(tokens, seq_len, path), max_tokens // seq_len)
    if n_windows < 1:
        raise DataError(f"max_tokens {max_tokens} is out of range; allowed >= seq_len {seq_len}")
    # Validated above, batches produced lazily: a generator body would delay the errors.
    return (
        _gather(tokens, np.arange(start, min(start + batch_size, n_windows)), seq_len)
        for start in range(0, n_windows, batch_size)
    )


def unigram_entropy(shard_path: Path) -> float:
    """Entropy in nats/token of the shard's empirical unigram distribution.

    A model must beat this cross-entropy to have learned anything beyond token frequencies.
    """
    tokens = read_shard(Path(shard_path))
    if len(tokens) == 0:
        raise DataError(f"shard {shard_path} is empty; entropy needs at least one token")
    size = int(tokens.max()) + 1
    # Chunked because bincount widens its input to int64: 8 bytes per token at once otherwise.
    counts = cast(  # an array, not sum's start 0: tokens is not empty
        np.ndarray,
        sum(
            np.bincount(tokens[start : start + _COUNT_CHUNK], minlength=size)
            for start in range(0, len(tokens), _COUNT_CHUNK)
        ),
    )
    p = counts[counts > 0] / len(tokens)
    return float(-(p * np.log(p)).sum())
