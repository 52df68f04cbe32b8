"""Bit-packing of integer codes into bytes.

``bits`` codes (1 to 8 bits each) are written as one little-endian bit stream: code i occupies
bits [i·b, (i+1)·b) of the stream, least significant bit first, so 3- and 6-bit codes cross
byte boundaries and waste nothing but the last byte's tail. ``trits`` packs codes 0, 1, 2 five
to a byte (3⁵ = 243 ≤ 256): 1.6 bits per ternary weight instead of 2.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

TRITS = "trits"
TRITS_PER_BYTE = 5


def encoding_name(bits: int) -> str:
    return f"bits{bits}"


def packed_size(count: int, encoding: str) -> int:
    """Bytes that ``count`` codes take in ``encoding``."""
    if encoding == TRITS:
        return math.ceil(count / TRITS_PER_BYTE)
    return math.ceil(count * _bits(encoding) / 8)


def pack(codes: Tensor, encoding: str) -> Tensor:
    """uint8 codes (any shape, read flat) → packed uint8 bytes, 1-D."""
    flat = codes.detach().cpu().reshape(-1).numpy().astype(np.uint8)
    if encoding == TRITS:
        return torch.from_numpy(_pack_trits(flat))
    bits = _bits(encoding)
    if flat.size and int(flat.max()) >= 1 << bits:
        raise ValueError(f"a code does not fit in {bits} bits (max {int(flat.max())})")
    # Each code's low `bits` bits, least significant first, then the stream in bytes.
    planes = (flat[:, None] >> np.arange(bits, dtype=np.uint8)) & 1
    return torch.from_numpy(np.packbits(planes.reshape(-1), bitorder="little"))


def unpack(packed: Tensor, encoding: str, count: int) -> Tensor:
    """The first ``count`` uint8 codes of ``packed`` (the inverse of :func:`pack`)."""
    data = packed.detach().cpu().reshape(-1).numpy().astype(np.uint8)
    if data.size != packed_size(count, encoding):
        raise ValueError(
            f"{data.size} bytes do not hold {count} codes in {encoding} "
            f"({packed_size(count, encoding)} bytes expected)"
        )
    if encoding == TRITS:
        return torch.from_numpy(_unpack_trits(data, count))
    bits = _bits(encoding)
    stream = np.unpackbits(data, bitorder="little")[: count * bits].reshape(count, bits)
    weights = (1 << np.arange(bits, dtype=np.uint16)).astype(np.uint16)
    return torch.from_numpy((stream.astype(np.uint16) @ weights).astype(np.uint8))


def _bits(encoding: str) -> int:
    if not encoding.startswith("bits") or not encoding[4:].isdigit():
        raise ValueError(f"unknown code encoding {encoding!r}; known: bits1..bits8, {TRITS}")
    bits = int(encoding[4:])
    if not 1 <= bits <= 8:
        raise ValueError(f"unknown code encoding {encoding!r}; known: bits1..bits8, {TRITS}")
    return bits


def _pack_trits(flat: np.ndarray) -> np.ndarray:
    if flat.size and int(flat.max()) > 2:
        raise ValueError(f"a code is not a trit (max {int(flat.max())})")
    padded = np.zeros(packed_size(flat.size, TRITS) * TRITS_PER_BYTE, dtype=np.uint16)
    padded[: flat.size] = flat
    powers = (3 ** np.arange(TRITS_PER_BYTE)).astype(np.uint16)
    return (padded.reshape(-1, TRITS_PER_BYTE) @ powers).astype(np.uint8)


def _unpack_trits(data: np.ndarray, count: int) -> np.ndarray:
    digits = data.astype(np.uint16)[:, None] // (3 ** np.arange(TRITS_PER_BYTE)) % 3
    return digits.reshape(-1)[:count].astype(np.uint8)
