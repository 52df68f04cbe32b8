"""Token shard files: a fixed 64-byte little-endian header followed by the raw token ids.

Header layout (byte offset: field):

* 0: magic ``b"QATTOKS\\x00"`` (8 bytes)
* 8: format version, uint32 (= 1)
* 12: dtype code, uint32: 2 = uint16 ids, 4 = uint32 ids (uint16 whenever vocab size <= 65536)
* 16: vocab size, uint32
* 20: token count, uint64
* 28-63: zero padding
"""

import os
import struct
import uuid
from pathlib import Path

import numpy as np

from qat.data.errors import DataError

MAGIC = b"QATTOKS\x00"
VERSION = 1
HEADER_SIZE = 64
_HEADER = struct.Struct("<8sIIIQ")
_DTYPES: dict[int, np.dtype] = {2: np.dtype("<u2"), 4: np.dtype("<u4")}
_MAX_VOCAB = 2**32 - 1  # the header field is a uint32


def dtype_code(vocab_size: int) -> int:
    """Bytes per id for a vocabulary: 2 while every id fits in uint16, else 4."""
    if not 1 <= vocab_size <= _MAX_VOCAB:
        raise DataError(f"vocab_size {vocab_size} is out of range; allowed 1..{_MAX_VOCAB}")
    return 2 if vocab_size <= 2**16 else 4


def id_dtype(vocab_size: int) -> np.dtype:
    """The on-disk dtype of ids below ``vocab_size``."""
    return _DTYPES[dtype_code(vocab_size)]


def write_shard(path: Path, ids: np.ndarray, vocab_size: int) -> None:
    """Write ``ids`` (1-D integers in [0, vocab_size)) atomically: readers see all or nothing."""
    path = Path(path)
    code = dtype_code(vocab_size)
    ids = np.asarray(ids)
    if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
        raise DataError(
            f"shard {path}: ids must be a 1-D integer array, got {ids.dtype} of shape {ids.shape}"
        )
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        raise DataError(
            f"shard {path}: ids span [{ids.min()}, {ids.max()}], "
            f"outside the vocabulary [0, {vocab_size})"
        )
    header = _HEADER.pack(MAGIC, VERSION, code, vocab_size, ids.size).ljust(HEADER_SIZE, b"\0")
    # A unique sibling, created like any file (mkstemp would make it private to this user).
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "xb") as f:
            f.write(header)
            f.write(np.ascontiguousarray(ids, dtype=_DTYPES[code]).data)  # no bytes copy
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_shard(path: Path, expected_vocab_size: int | None = None) -> np.ndarray:
    """The shard's ids as a read-only memory map; DataError on any sign of corruption."""
    path = Path(path)
    code, vocab_size, count = check_shard(path, expected_vocab_size)
    if count == 0:  # mmap cannot map zero bytes
        return np.empty(0, dtype=_DTYPES[code])
    ids = np.memmap(path, dtype=_DTYPES[code], mode="r", offset=HEADER_SIZE, shape=(count,))
    top = int(ids.max())
    if top >= vocab_size:
        raise _corrupt(path, f"shard {path} holds id {top}, not below its vocab size {vocab_size}")
    return ids


def check_shard(path: Path, expected_vocab_size: int | None = None) -> tuple[int, int, int]:
    """The shard's (dtype code, vocab size, token count) once its header and size check out;
    reads the 64-byte header only, so it can run before any heavy work."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            header = f.read(HEADER_SIZE)
    except OSError as e:
        raise _corrupt(path, f"cannot read shard {path}: {e.strerror}") from None
    if len(header) < HEADER_SIZE:
        raise _corrupt(path, f"shard {path} is truncated: {size} bytes, shorter than its header")
    magic, version, code, vocab_size, count = _HEADER.unpack_from(header)
    if magic != MAGIC:
        raise _corrupt(path, f"{path} is not a token shard: magic {magic!r}, expected {MAGIC!r}")
    if version != VERSION:
        raise _corrupt(
            path, f"shard {path} has format version {version}; this code reads {VERSION}"
        )
    if code not in _DTYPES:
        raise _corrupt(
            path, f"shard {path} has dtype code {code}; allowed 2 (uint16) or 4 (uint32)"
        )
    if vocab_size == 0 or code < dtype_code(vocab_size):
        raise _corrupt(
            path, f"shard {path}: vocab size {vocab_size} does not fit dtype code {code}"
        )
    if any(header[_HEADER.size :]):
        raise _corrupt(path, f"shard {path} has a corrupt header: padding bytes are not zero")
    expected_size = HEADER_SIZE + count * code
    if size != expected_size:
        raise _corrupt(
            path,
            f"shard {path} is {'truncated' if size < expected_size else 'too long'}: "
            f"{size} bytes, header says {count} tokens = {expected_size} bytes",
        )
    if expected_vocab_size is not None and vocab_size != expected_vocab_size:
        raise _corrupt(
            path,
            f"shard {path} was written for vocab size {vocab_size}, expected {expected_vocab_size}",
        )
    return code, vocab_size, count


def _corrupt(path: Path, message: str) -> DataError:
    """``message``, and the command that rebuilds the shard's dataset when its folder says how
    it was prepared (meta.json); preparing skips a folder that has one, hence the rm first."""
    return DataError(f"{message}; {hint}" if (hint := rebuild_hint(path.parent)) else message)


def rebuild_hint(folder: Path) -> str | None:
    """``rebuild it: rm -rf <folder> && python -m qat.data.prepare ...`` from the folder's
    meta.json (None without one): the exact command that prepares the same dataset again."""
    import json
    import shlex

    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        args = ["--source", str(meta["source"]), "--vocab-size", str(int(meta["vocab_size"]))]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    # Only the settings that differ from prepare's defaults, so the command stays short.
    for key, flag, default in (
        ("val_fraction", "--val-fraction", 0.02),
        ("seed", "--seed", 0),
        ("max_train_tokens", "--max-train-tokens", None),
    ):
        if meta.get(key, default) != default:
            args += [flag, str(meta[key])]
    out = shlex.quote(str(folder))
    if "tokenizer" in meta:  # a pretrained model's tokenizer, which only training passes in
        return f"rebuild it: rm -rf {out} (the next training run prepares it again)"
    command = " ".join(shlex.quote(a) for a in args)
    return f"rebuild it: rm -rf {out} && python -m qat.data.prepare {command} --out {out}"
