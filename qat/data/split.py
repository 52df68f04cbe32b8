"""Train/validation split of documents by a hash of their text.

The hash (SHA-256, not Python's salted ``hash``) makes the split identical across runs, machines
and document orders, and keeps duplicate documents on the same side, so validation text never
appears in training.

Every document has a rank in [0, 1): it is validation when its rank is below ``val_fraction``.
A small corpus can leave a side empty, or validation shorter than the evaluation asks for; the
split then moves the documents of lowest rank first, exactly those a larger ``val_fraction``
would move, so the result is still a pure function of the texts.
"""

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from qat.data.errors import DataError

# Validation never takes more than this share of a corpus's tokens to reach its token target:
# training keeps at least three quarters of a small corpus.
MAX_VAL_SHARE = 0.25


def check_val_fraction(val_fraction: float) -> None:
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction {val_fraction} is out of range; allowed 0 < f < 1")


def rank(text: str, seed: int = 0) -> float:
    """The document's place in [0, 1) of the split's order; ``seed`` picks another order."""
    digest = hashlib.sha256(f"{seed}\0{text}".encode()).digest()
    # The first 8 bytes as a uniform number in [0, 1).
    return int.from_bytes(digest[:8], "big") / 2**64


def is_validation(text: str, val_fraction: float, seed: int = 0) -> bool:
    """Whether ``text`` belongs to the validation split; ``seed`` picks another split."""
    return rank(text, seed) < val_fraction


def split_documents(
    docs: Sequence[str], val_fraction: float, seed: int = 0
) -> tuple[list[str], list[str]]:
    """(train, validation) by rank; with two documents or more, neither side is left empty:
    the nearest document crosses over."""
    train = [d for d in docs if not is_validation(d, val_fraction, seed)]
    val = [d for d in docs if is_validation(d, val_fraction, seed)]
    if not val and len(train) >= 2:
        first = min(range(len(train)), key=lambda i: rank(train[i], seed))
        val.append(train.pop(first))
    elif not train and len(val) >= 2:
        last = max(range(len(val)), key=lambda i: rank(val[i], seed))
        train.append(val.pop(last))
    return train, val


@dataclass(frozen=True)
class TopUp:
    """What :func:`top_up_validation` did, for meta.json and the one line it prints."""

    moved_docs: int
    val_tokens: int
    target_tokens: int
    reached: bool

    def describe(self) -> str:
        moved = f"moved {self.moved_docs} document(s) from training"
        if self.reached:
            return (
                f"validation: {moved} to hold {self.val_tokens:,} tokens "
                f"(eval_tokens {self.target_tokens:,})"
            )
        return (
            f"validation: {moved}; {self.val_tokens:,} tokens < eval_tokens "
            f"{self.target_tokens:,} asked (the corpus allows at most "
            f"{MAX_VAL_SHARE:.0%} of its tokens for validation)"
        )


def top_up_validation(
    train: Sequence[str],
    val: Sequence[str],
    target_tokens: int,
    count_tokens: Callable[[Sequence[str]], list[int]],
    seed: int = 0,
) -> tuple[list[str], list[str], TopUp | None]:
    """Move training documents, lowest rank first, into validation until it holds
    ``target_tokens`` tokens, while it stays within ``MAX_VAL_SHARE`` of the corpus's tokens and
    training keeps a document. ``count_tokens`` gives each document's token count.

    None (and the split unchanged) when validation already holds the target.
    """
    val_tokens = sum(count_tokens(val))
    if val_tokens >= target_tokens:
        return list(train), list(val), None
    order = sorted(range(len(train)), key=lambda i: rank(train[i], seed))
    sizes = count_tokens([train[i] for i in order])
    ceiling = MAX_VAL_SHARE * (val_tokens + sum(sizes))
    moved: set[int] = set()
    for i, size in zip(order, sizes, strict=True):
        if val_tokens >= target_tokens or len(moved) == len(train) - 1:
            break
        if val_tokens + size > ceiling:
            break  # the next document would take validation past its share
        moved.add(i)
        val_tokens += size
    new_val = list(val) + [train[i] for i in sorted(moved)]
    new_train = [d for i, d in enumerate(train) if i not in moved]
    return (
        new_train,
        new_val,
        TopUp(len(moved), val_tokens, target_tokens, val_tokens >= target_tokens),
    )


def evaluation_note(val_tokens: int, eval_tokens: int, seq_len: int) -> str | None:
    """One line when the validation shard holds fewer tokens than ``eval_tokens`` asks, else
    None. Evaluation reads whole windows of ``seq_len`` tokens (a target for each)."""
    windows = max(val_tokens - 1, 0) // seq_len
    if windows >= eval_tokens // seq_len:
        return None
    scored = windows * seq_len
    return (
        f"validation: {val_tokens:,} tokens < eval_tokens {eval_tokens:,} asked; "
        f"evaluating on all {scored:,} (whole windows of {seq_len})"
    )
