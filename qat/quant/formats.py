"""Number formats as data: which quantizer family, its clip levels and its scale initialisation.

Every supported bit width of the integer (ParetoQ) family maps to one frozen :class:`QuantFormat`;
the float formats (minifloats and the block-scaled MX/NV formats) are named in FLOAT_FORMATS and
chosen by ``quant.format``. The fake-quant math lives in ``reference.py`` (and any kernel
backend); this module only describes the formats.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from torch import Tensor

from qat.quant.block_scaled import MX_BLOCKS, NV_BLOCKS, BlockScaling
from qat.quant.errors import QuantConfigError
from qat.quant.minifloat import FP4_E2M1, FP6_E2M3, FP6_E3M2, FP8_E4M3, ElementEncoding

# "float": a minifloat element (``element``), optionally block-scaled (``blocks``).
Family = Literal["binary", "seq", "lsq", "float"]

# Forward and backward clamp the scale to at least this, so w/α never divides by zero.
SCALE_EPS = 1e-5
# SEQ clips u = w/α to [-c, c] with c slightly below 1, so |u| = 1 still rounds to the top level.
SEQ_CLIP = 1.0 - 1e-2
FP_BITS = 16
ALLOWED_BITS_TEXT = "1, 1.58 (or 'ternary'), 2, 3, 4, 6, 8, 16 (FP)"


@dataclass(frozen=True)
class QuantFormat:
    """One weight format.

    ``qn``/``qp`` are the clip values in units of α (the scale gradient uses them for clipped
    weights, and ``qp`` sets the gradient scale 1/sqrt(numel·qp)). For SEQ, ``n_levels`` is the
    stretch n of ParetoQ's formula q(u) = (round(clamp(u)·n − shift) + shift)/n — 1.5 for ternary,
    2 for 2 bits — not the number of levels; :func:`level_count` gives that.

    A float format has ``element`` (its minifloat) and, when block-scaled, ``blocks``; its clip
    values are ±max_normal in units of α (times the block scale), and ``bits`` is the storage
    per weight with the block scales counted (4.25 for MXFP4).
    """

    name: str
    bits: float
    family: Family
    qn: float
    qp: float
    n_levels: float | None = None
    shift: float = 0.0
    element: ElementEncoding | None = None
    blocks: BlockScaling | None = None

    def __post_init__(self) -> None:
        if self.family not in ("binary", "seq", "lsq", "float"):
            raise QuantConfigError(
                f"family={self.family!r} is not supported; allowed: 'binary', 'seq', 'lsq', 'float'"
            )
        if (self.family == "float") != (self.element is not None):
            raise QuantConfigError(f"{self.name}: a float format, and only one, needs an element")
        if not (self.qn < 0 < self.qp):
            raise QuantConfigError(f"qn={self.qn}, qp={self.qp}: need qn < 0 < qp")
        if self.family == "seq" and (self.n_levels is None or self.n_levels <= 0):
            raise QuantConfigError(f"n_levels={self.n_levels!r}: a SEQ format needs n_levels > 0")

    @property
    def per_tensor(self) -> bool:
        """Whether quantizing one row reads the whole weight (NVFP4's per-tensor scale comes from
        its amax): the rows of several weights then cannot be quantized as one tensor."""
        return self.blocks is not None and self.blocks.scale == "e4m3_per_tensor"


def _seq(name: str, bits: float, n: float, shift: float) -> QuantFormat:
    qp = (n - shift) / n
    return QuantFormat(name, bits, "seq", qn=-qp, qp=qp, n_levels=n, shift=shift)


def _lsq(bits: int) -> QuantFormat:
    half = 2 ** (bits - 1)
    return QuantFormat(f"int{bits}", float(bits), "lsq", qn=-float(half), qp=float(half - 1))


_FORMATS: dict[float, QuantFormat] = {
    1.0: QuantFormat("binary", 1.0, "binary", qn=-1.0, qp=1.0),
    1.58: _seq("ternary", 1.58, n=1.5, shift=0.0),
    2.0: _seq("seq2", 2.0, n=2.0, shift=0.5),
    **{float(b): _lsq(b) for b in (3, 4, 6, 8)},
}


def _float(name: str, element: ElementEncoding, blocks: BlockScaling | None = None) -> QuantFormat:
    overhead = blocks.scale_bits / blocks.block_size if blocks is not None else 0.0
    top = element.max_normal
    return QuantFormat(
        name, element.bits + overhead, "float", -top, top, element=element, blocks=blocks
    )


INT_FORMAT = "int"  # quant.format's default: the integer family above, chosen by bits
FLOAT_FORMATS: dict[str, QuantFormat] = {
    "fp4_e2m1": _float("fp4_e2m1", FP4_E2M1),
    "fp6_e2m3": _float("fp6_e2m3", FP6_E2M3),
    "fp6_e3m2": _float("fp6_e3m2", FP6_E3M2),
    "fp8_e4m3": _float("fp8_e4m3", FP8_E4M3),
    "mxfp4": _float("mxfp4", FP4_E2M1, MX_BLOCKS),
    "nvfp4": _float("nvfp4", FP4_E2M1, NV_BLOCKS),
}
ALLOWED_FORMATS: tuple[str, ...] = (INT_FORMAT, *FLOAT_FORMATS)


def check_format_name(name: str) -> None:
    """Raise QuantConfigError (one line listing the allowed names) for an unknown format."""
    if name not in ALLOWED_FORMATS:
        raise QuantConfigError(
            f"quant.format={name!r} is not supported; allowed: {', '.join(ALLOWED_FORMATS)}"
        )


def element_bits(name: str) -> int:
    """The bits of one stored element of a float format (the ``bits`` a cell of it declares)."""
    check_format_name(name)
    element = FLOAT_FORMATS[name].element
    if element is None:
        raise QuantConfigError(f"quant.format={name!r} has no float element")
    return element.bits


def resolve_format(bits: float | str, name: str = INT_FORMAT) -> QuantFormat:
    """The format of a cell: the integer one for ``bits`` when ``name`` is 'int', else the
    named float format (its element must have ``bits`` bits)."""
    check_format_name(name)
    if name == INT_FORMAT:
        return format_for_bits(bits)
    if _parse_bits(bits) != element_bits(name):
        raise QuantConfigError(
            f"quant.format={name} stores {element_bits(name)}-bit elements; set bits="
            f"{element_bits(name)} (got bits={bits!r})"
        )
    return FLOAT_FORMATS[name]


def _parse_bits(bits: float | str) -> float:
    """Normalise a config value (number, numeric string or 'ternary') to a key of _FORMATS."""
    bad = QuantConfigError(f"bits={bits!r} is not supported; allowed: {ALLOWED_BITS_TEXT}")
    if isinstance(bits, bool):  # bool is an int, but True is no bit width
        raise bad
    if isinstance(bits, str):
        text = bits.strip().lower()
        if text == "ternary":
            return 1.58
        try:
            value = float(text)
        except ValueError:
            raise bad from None
    elif isinstance(bits, int | float):
        value = float(bits)
    else:
        raise bad
    if value not in _FORMATS and value != FP_BITS:
        raise bad
    return value


def is_full_precision(bits: float | str) -> bool:
    """True for bits=16 (no quantization); raises QuantConfigError for unsupported values."""
    return _parse_bits(bits) == FP_BITS


def format_for_bits(bits: float | str) -> QuantFormat:
    """The format for ``bits``; 16 (FP) has no format and raises — check is_full_precision first."""
    value = _parse_bits(bits)
    if value == FP_BITS:
        raise QuantConfigError(
            f"bits={bits!r} is full precision and has no quantization format; "
            "skip quantization when is_full_precision(bits)"
        )
    return _FORMATS[value]


def as_format(spec: QuantFormat | float | str) -> QuantFormat:
    """Accept either a ready format or a bits value (of the integer family)."""
    return spec if isinstance(spec, QuantFormat) else format_for_bits(spec)


def levels(fmt: QuantFormat) -> tuple[float, ...]:
    """The quantized values in units of α, ascending."""
    if fmt.family == "binary":
        return (-1.0, 1.0)
    if fmt.family == "lsq":
        return tuple(float(k) for k in range(int(fmt.qn), int(fmt.qp) + 1))
    if fmt.element is not None:
        return float_grid(fmt.element)
    n, shift = fmt.n_levels, fmt.shift
    assert n is not None  # guaranteed by QuantFormat.__post_init__
    # The rounding is monotone, so the extreme integers come from the clip bounds.
    lo, hi = round(-SEQ_CLIP * n - shift), round(SEQ_CLIP * n - shift)
    return tuple((k + shift) / n for k in range(lo, hi + 1))


def float_grid(enc: ElementEncoding) -> tuple[float, ...]:
    """Every finite value of a minifloat, ascending (±0 once), up to ±max_normal."""
    step = 2.0 ** (enc.min_normal_exp - enc.man_bits)  # the subnormal spacing
    values = {0.0}
    # Binade e holds 2^man_bits values spaced 2^(e − man_bits) from 2^e; the subnormals continue
    # the first one down to zero with the same spacing.
    values.update(k * step for k in range(1, 2**enc.man_bits))
    e = enc.min_normal_exp
    while 2.0**e <= enc.max_normal:
        spacing = 2.0 ** (e - enc.man_bits)
        values.update(2.0**e + k * spacing for k in range(2**enc.man_bits))
        e += 1
    positive = sorted(v for v in values if v <= enc.max_normal)
    return tuple([-v for v in reversed(positive[1:])] + positive)


def level_count(fmt: QuantFormat) -> int:
    """How many distinct values one row can take."""
    return len(levels(fmt))


def init_scale(w: Tensor, fmt: QuantFormat) -> Tensor:
    """Initial per-output-channel scale α₀, shape [out, 1], float32, detached.

    binary: mean|w| (the L1-optimal binary scale); SEQ: max|w| (the clip covers the row);
    LSQ and float: max|w|/Qp (the top level lands on the largest weight; for block-scaled formats
    the block scales then start near 1). An all-zero row gets
    SCALE_EPS so the scale stays trainable.
    """
    if w.dim() != 2:
        raise ValueError(f"weight must be 2-D [out, in], got shape {tuple(w.shape)}")
    mag = w.detach().float().abs()
    if fmt.family == "binary":
        alpha = mag.mean(dim=1, keepdim=True)
    elif fmt.family == "seq":
        alpha = mag.amax(dim=1, keepdim=True)
    else:
        alpha = mag.amax(dim=1, keepdim=True) / fmt.qp
    return alpha.clamp_min(SCALE_EPS)


def grad_scale(w: Tensor | int, fmt: QuantFormat) -> float:
    """LSQ's scale-gradient factor 1/sqrt(numel·Qp), which keeps α's step size comparable to w's
    (``w``: the weight, or its number of elements)."""
    numel = w if isinstance(w, int) else w.numel()
    return 1.0 / math.sqrt(numel * fmt.qp)
