"""Prepare a dataset folder: tokenizer, train/validation token shards and meta.json.

    python -m qat.data.prepare --source bundled --out data_cache/bundled-v8192 --vocab-size 8192
    python -m qat.data.prepare --source bundled-large --vocab-size 4096 --max-train-tokens 12000000

The folder appears complete or not at all: it is built in a hidden temporary sibling and renamed
into place, with meta.json written last. Concurrent prepares of one folder serialise on an
``fcntl`` lock on a sibling lock file, and a prepare that finds a matching meta.json returns it
without work.
"""

import argparse
import contextlib
import dataclasses
import hashlib
import json
import os
import re
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import tokenizers
from tokenizers import Tokenizer
from tqdm import tqdm

from qat.data.bundled import BUNDLED_PACKAGES
from qat.data.corpus import BUNDLED_LARGE, PACKAGED_SOURCES, check_source, iter_documents
from qat.data.debian import DEBIAN_PACKAGES
from qat.data.errors import DataError
from qat.data.info import (
    META_FILE,
    TOKENIZER_FILE,
    TRAIN_FILE,
    VAL_FILE,
    DatasetInfo,
    read_meta,
)
from qat.data.shards import id_dtype, write_shard
from qat.data.split import check_val_fraction, split_documents, top_up_validation
from qat.data.tokenizer import (
    GivenTokenizer,
    check_vocab_size,
    encode_documents,
    eot_id,
    save_tokenizer,
    train_tokenizer,
)
from qat.locks import file_lock

__all__ = ["DatasetInfo", "default_data_dir", "main", "prepare"]

# Bump when the folder layout or the meaning of its files changes: old folders then mismatch.
FORMAT_VERSION = 1
_ENCODE_CHUNK = 512  # documents per encode_batch call: big enough to use every core
_HASH_CHUNK = 1 << 20
# The tokenizer trains on at most about this many bytes of training text: all of it for corpora
# up to this size (the bundled one), else a deterministic sample of whole documents.
TOKENIZER_SAMPLE_BYTES = 32_000_000


def canonical_source(source: str) -> str:
    """The source as recorded in meta.json: paths made absolute so the cwd does not matter."""
    if source in PACKAGED_SOURCES or source.startswith("hf:"):
        return source
    return str(Path(source).expanduser().resolve())


def default_data_dir(
    source: str,
    vocab_size: int,
    max_train_tokens: int | None = None,
    tokenizer: str | None = None,
) -> Path:
    """``<root>/<slug>-v<vocab_size>``, root being ``$QAT_DATA_DIR`` or ``./data_cache``;
    ``-t<max_train_tokens>`` is appended for a capped train shard, and ``-k<hash>`` for a
    given tokenizer's name (a pretrained model's, instead of one trained here).

    Sources other than "bundled" and "bundled-large" get a short hash of their canonical form in
    the slug, so two folders that share a name do not share a cache entry.
    """
    root = Path(os.environ.get("QAT_DATA_DIR") or "data_cache")
    canonical = canonical_source(source)
    if canonical in PACKAGED_SOURCES:
        slug = canonical
    else:
        name = canonical if canonical.startswith("hf:") else Path(canonical).name
        digest = hashlib.sha256(canonical.encode()).hexdigest()[:8]
        slug = f"{re.sub(r'[^a-z0-9]+', '-', name.lower()).strip('-') or 'data'}-{digest}"
    cap = "" if max_train_tokens is None else f"-t{max_train_tokens}"
    given = "" if tokenizer is None else f"-k{hashlib.sha256(tokenizer.encode()).hexdigest()[:8]}"
    return root / f"{slug}-v{vocab_size}{cap}{given}"


def prepare(
    source: str,
    out_dir: Path,
    vocab_size: int = 8192,
    val_fraction: float = 0.02,
    seed: int = 0,
    max_train_tokens: int | None = None,
    tokenizer: GivenTokenizer | None = None,
    min_val_tokens: int | None = None,
) -> DatasetInfo:
    """Build (or find already built) the dataset of ``source`` in ``out_dir``.

    ``tokenizer``: encode with this one (a pretrained model's) instead of training a BPE.

    ``min_val_tokens`` (the evaluation's eval_tokens): a corpus of your own whose validation
    documents hold fewer tokens gives validation more documents, up to a quarter of its tokens
    (qat.data.split.top_up_validation). The packaged corpora keep their published split. An
    existing folder is used as built; the split it got is recorded in its meta.json.

    ``seed`` salts the document hash that decides the train/validation split.
    ``max_train_tokens`` caps the train shard: whole training documents are taken in a
    seed-salted hash order while they fit, then written in corpus order (the tokenizer and the
    validation shard are those of the uncapped dataset).
    """
    out_dir = Path(out_dir)
    check_vocab_size(vocab_size)
    id_dtype(vocab_size)  # rejects vocabularies too large for the shard header
    check_val_fraction(val_fraction)
    if max_train_tokens is not None and (
        not isinstance(max_train_tokens, int) or max_train_tokens < 2
    ):
        raise DataError(f"max_train_tokens {max_train_tokens!r} must be an integer >= 2 or None")
    request = {
        "format_version": FORMAT_VERSION,
        "source": canonical_source(source),
        "vocab_size": vocab_size,
        "val_fraction": val_fraction,
        "seed": seed,
        # None (no cap) also matches folders made before the option existed, which lack the key.
        "max_train_tokens": max_train_tokens,
    }
    if tokenizer is not None:  # absent otherwise, so folders made before the option match
        request["tokenizer"] = tokenizer.name
    if (info := _existing(out_dir, request)) is not None:
        return info  # built already: the source need not be here (shards carried to a GPU node)
    check_source(source)  # before anything is created on disk
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with _locked(out_dir):
        # Another process may have built it while this one waited for the lock.
        if (info := _existing(out_dir, request)) is not None:
            return info
        _clear_leftovers(out_dir)
        # Not mkdtemp: its private permissions would stick to a data cache others may share.
        build_dir = out_dir.parent / f"{_build_prefix(out_dir)}{uuid.uuid4().hex}"
        try:
            build_dir.mkdir()
            target = None if source in PACKAGED_SOURCES else min_val_tokens
            _build(source, build_dir, request, tokenizer, target)
            build_dir.rename(out_dir)
        except BaseException:
            shutil.rmtree(build_dir, ignore_errors=True)
            raise
    return DatasetInfo.load(out_dir)


def _existing(out_dir: Path, request: dict[str, Any]) -> DatasetInfo | None:
    meta = read_meta(out_dir)
    if meta is None:
        return None
    differences = [
        f"{key}={meta.get(key)!r} (requested {value!r})"
        for key, value in request.items()
        if meta.get(key) != value
    ]
    if differences:
        raise DataError(
            f"{out_dir} holds a dataset prepared with {', '.join(differences)}; "
            "choose another output folder or delete this one"
        )
    return DatasetInfo.load(out_dir)


def _build_prefix(out_dir: Path) -> str:
    return f".{out_dir.name}.build-"


def _locked(out_dir: Path) -> contextlib.AbstractContextManager[None]:
    return file_lock(out_dir.parent / f".{out_dir.name}.lock")


def _clear_leftovers(out_dir: Path) -> None:
    """Remove build folders of killed prepares (safe: we hold the lock, so none is running)."""
    for stale in out_dir.parent.iterdir():
        if stale.name.startswith(_build_prefix(out_dir)):
            shutil.rmtree(stale, ignore_errors=True)
    if out_dir.exists():
        if not out_dir.is_dir() or any(out_dir.iterdir()):
            raise DataError(
                f"{out_dir} exists but is not a prepared dataset (no {META_FILE}); "
                "choose another output folder or delete it"
            )
        out_dir.rmdir()


def _build(
    source: str,
    build_dir: Path,
    request: dict[str, Any],
    given: GivenTokenizer | None,
    min_val_tokens: int | None = None,
) -> None:
    vocab_size, val_fraction, seed = request["vocab_size"], request["val_fraction"], request["seed"]
    train_docs, val_docs = split_documents(list(iter_documents(source)), val_fraction, seed)
    if not train_docs or not val_docs:
        raise DataError(
            f"source {source!r} splits into {len(train_docs)} train and {len(val_docs)} "
            f"validation documents at val_fraction {val_fraction}; both need at least one "
            "(add documents, separate them with <|endoftext|> lines, or change val_fraction)"
        )
    # Trained on training text only, so nothing about validation leaks into the vocabulary.
    sample = tokenizer_sample(train_docs) if given is None else []
    tokenizer = _train_reporting(sample, vocab_size) if given is None else given.tokenizer
    top_up = None
    if min_val_tokens is not None:
        train_docs, val_docs, top_up = top_up_validation(
            train_docs, val_docs, min_val_tokens, _token_counter(tokenizer), seed
        )
        if top_up is not None:
            print(top_up.describe(), flush=True)
            if given is None and top_up.moved_docs:  # retrained without the moved documents
                sample = tokenizer_sample(train_docs)
                tokenizer = _train_reporting(sample, vocab_size)
    end = eot_id(tokenizer) if given is None else given.end_id
    save_tokenizer(tokenizer, build_dir / TOKENIZER_FILE)
    cap = request["max_train_tokens"]
    n_train, n_train_docs = _write_tokens(
        tokenizer, train_docs, build_dir / TRAIN_FILE, vocab_size, end, cap, seed
    )
    n_val, n_val_docs = _write_tokens(tokenizer, val_docs, build_dir / VAL_FILE, vocab_size, end)
    meta = {
        **request,
        "end_token": tokenizer.id_to_token(end),
        "tokenizer_vocab_size": tokenizer.get_vocab_size(),
        "tokenizer_train_docs": len(sample),
        "tokenizer_train_bytes": sum(len(d.encode()) for d in sample),
        "n_train_tokens": n_train,
        "n_val_tokens": n_val,
        "n_train_docs": n_train_docs,
        "n_val_docs": n_val_docs,
        "n_train_docs_uncapped": len(train_docs),
        # Absent when the split is the plain hash split (as in folders made before top-ups).
        **({"val_top_up": dataclasses.asdict(top_up)} if top_up is not None else {}),
        "fingerprint": _fingerprint(build_dir),
        "created_with": {"qat.data": FORMAT_VERSION, "tokenizers": tokenizers.__version__},
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if source in PACKAGED_SOURCES:
        meta["bundled_packages"] = {p.name: p.version for p in BUNDLED_PACKAGES}
    if source == BUNDLED_LARGE:
        meta["debian_packages"] = {p.name: p.version for p in DEBIAN_PACKAGES}
    # Written last: its presence is what marks the folder complete.
    (build_dir / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def _train_reporting(sample: Sequence[str], vocab_size: int) -> Tokenizer:
    """Train the tokenizer with a line on stderr before and after: it takes seconds to
    minutes and shows no progress of its own."""
    megabytes = sum(len(d.encode()) for d in sample) / 1e6
    print(
        f"training a {vocab_size}-token BPE tokenizer on {megabytes:.1f} MB of text ...",
        end="",
        file=sys.stderr,
        flush=True,
    )
    start = time.perf_counter()
    tokenizer = train_tokenizer(sample, vocab_size)
    print(f" done in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    return tokenizer


def _token_counter(tokenizer: Tokenizer) -> Callable[[Sequence[str]], list[int]]:
    def count(docs: Sequence[str]) -> list[int]:
        encodings = tokenizer.encode_batch_fast(list(docs), add_special_tokens=False)
        return [len(e.ids) + 1 for e in encodings]  # + the end-of-text token

    return count


def _hash_fraction(salt: str, text: str) -> float:
    return int.from_bytes(hashlib.sha256(f"{salt}\0{text}".encode()).digest()[:8], "big") / 2**64


def tokenizer_sample(docs: Sequence[str], max_bytes: int = TOKENIZER_SAMPLE_BYTES) -> list[str]:
    """The documents the tokenizer trains on: all if they total ``max_bytes`` or less, else
    those whose text hash falls below ``max_bytes / total`` (about ``max_bytes``), in order.

    Depends only on the texts, so it is the same on every run and machine.
    """
    total = sum(len(d.encode()) for d in docs)
    if total <= max_bytes:
        return list(docs)
    fraction = max_bytes / total
    return [d for d in docs if _hash_fraction("tokenizer", d) < fraction]


def _write_tokens(
    tokenizer: Tokenizer,
    docs: Sequence[str],
    path: Path,
    vocab_size: int,
    end: int,
    max_tokens: int | None = None,
    seed: int = 0,
) -> tuple[int, int]:
    """Write the shard of ``docs`` (capped at ``max_tokens``); (tokens, documents) written."""
    dtype = id_dtype(vocab_size)  # convert chunk by chunk: int64 ids of it all would be 4x larger
    parts: list[np.ndarray] = []
    with tqdm(total=len(docs), desc=f"tokenizing {path.stem}", unit="doc") as progress:
        for start in range(0, len(docs), _ENCODE_CHUNK):
            chunk = docs[start : start + _ENCODE_CHUNK]
            if max_tokens is None:
                parts.append(encode_documents(tokenizer, chunk, end).astype(dtype))
            else:  # one array per document, to pick whole documents below
                encodings = tokenizer.encode_batch_fast(list(chunk), add_special_tokens=False)
                parts.extend(np.array([*e.ids, end], dtype=dtype) for e in encodings)
            progress.update(len(chunk))
    n_docs = len(docs)
    if max_tokens is not None:
        chosen = _fit_documents(docs, [p.size for p in parts], max_tokens, seed)
        parts = [parts[i] for i in chosen]
        n_docs = len(chosen)
    ids = np.concatenate(parts) if parts else np.empty(0, dtype=dtype)
    write_shard(path, ids, vocab_size)
    return int(ids.size), n_docs


def _fit_documents(docs: Sequence[str], sizes: Sequence[int], budget: int, seed: int) -> list[int]:
    """Indices (in corpus order) of the documents taken, in seed-salted hash order, while they fit.

    The order is a deterministic shuffle, so a capped shard samples every source of the corpus
    rather than its first ones.
    """
    order = sorted(range(len(docs)), key=lambda i: (_hash_fraction(f"{seed}\0cap", docs[i]), i))
    chosen, total = [], 0
    for i in order:
        if total + sizes[i] <= budget:
            chosen.append(i)
            total += sizes[i]
    if not chosen:
        raise DataError(f"max_train_tokens {budget} is smaller than every training document")
    return sorted(chosen)


def _fingerprint(build_dir: Path) -> str:
    """SHA-256 over the tokenizer and both shards: equal fingerprints mean equal token data."""
    digest = hashlib.sha256()
    for name in (TOKENIZER_FILE, TRAIN_FILE, VAL_FILE):
        digest.update(name.encode() + b"\0")
        with open(build_dir / name, "rb") as f:
            while chunk := f.read(_HASH_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qat.data.prepare", description=__doc__)
    parser.add_argument(
        "--source", default="bundled", help="bundled, bundled-large, a file/folder, or hf:NAME"
    )
    parser.add_argument("--out", type=Path, help="output folder (default: see default_data_dir)")
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--val-fraction", type=float, default=0.02)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--max-train-tokens",
        type=int,
        help="cap the train shard at this many tokens (whole documents, deterministic sample)",
    )
    parser.add_argument(
        "--eval-tokens",
        type=int,
        help="a corpus of your own: validation takes documents until it holds this many tokens "
        "(at most a quarter of the corpus); train.py passes data.eval_tokens",
    )
    args = parser.parse_args(argv)
    out = args.out or default_data_dir(args.source, args.vocab_size, args.max_train_tokens)
    start = time.perf_counter()
    try:
        info = prepare(
            args.source,
            out,
            args.vocab_size,
            args.val_fraction,
            args.seed,
            args.max_train_tokens,
            min_val_tokens=args.eval_tokens,
        )
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(
        f"{info.source} -> {info.out_dir}: {info.n_train_tokens:,} train + "
        f"{info.n_val_tokens:,} val tokens, vocab {info.vocab_size}, "
        f"fingerprint {info.fingerprint[:12]}, {time.perf_counter() - start:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
