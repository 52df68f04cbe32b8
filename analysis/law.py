"""Scaling laws as data: named parameters, the predicted log-loss, its gradient, bounds, starts.

Every law here is a sum of positive power-law terms,

    L = Σ_k c_k · exp(−Σ_j e_kj · z_kj),

where c_k is a coefficient, e_kj an exponent and z_kj a log-feature of the run (log D_total,
log N, B·ln 2, log S_fp, log S_qat, and for a law with several number formats one indicator per
format, see `Law.with_formats`). We predict log L as a log-sum-exp over the terms with the
coefficients on a log scale, which keeps every term positive and the fit well conditioned even
when a coefficient spans many orders of magnitude (β ≈ 1e3 next to θ ≈ 1e-1).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike

from analysis.errors import AnalysisError

LN2 = math.log(2.0)
FP_BITS = 16.0  # runs at this bit width (or above) are full precision: no QAT phase
# What a law's recorded domain must hold (see analysis.domain).
DOMAIN_KEYS = ("N", "D_total", "D_fp", "D_qat", "S_total", "qat_frac", "loss", "bits")
FEATURES = ("log_D", "log_N", "B_ln2", "log_S_fp", "log_S_qat")
# The integer (ParetoQ) family, `quant.format=int`: the base format of a law fitted on it.
INT_FORMAT = "int"
PLAIN_FORMATS = (INT_FORMAT,)  # the formats of a law without format factors
# A format factor's feature is "fmt.<format>" and its parameter "<term coefficient>.<format>".
FORMAT_FEATURE = "fmt."
# A format factor's allowed range: from 100x smaller to 100x larger than the base format's term.
FACTOR_RANGE = (1e-2, 1e2)


def features(
    N: ArrayLike,
    D_fp: ArrayLike,
    D_qat: ArrayLike,
    B: ArrayLike,
    names: tuple[str, ...] = FEATURES,
    fmt: ArrayLike = INT_FORMAT,
) -> np.ndarray:
    """Log-features of runs, shape (..., len(names)), from broadcastable arrays.

    S_x = D_x / (N·B/8) is tokens per parameter byte. A zero D_x gives log S_x = −inf, which makes
    any law term that divides by S_x infinite: the law's own statement that it does not apply.
    A feature "fmt.<name>" is −1 for runs of format <name> (`fmt`, names per run), else 0: its
    "exponent" e then multiplies the term by exp(e) for those runs only (see `Law.with_formats`).
    """
    fmt = np.asarray(fmt, dtype=object)
    indicators = {
        n: -(fmt == n.removeprefix(FORMAT_FEATURE)).astype(float)
        for n in names
        if n.startswith(FORMAT_FEATURE)
    }
    N, D_fp, D_qat, B, *ind = np.broadcast_arrays(
        *(np.asarray(v, dtype=float) for v in (N, D_fp, D_qat, B)), *indicators.values()
    )
    by_name = dict(zip(indicators, ind, strict=True))
    param_bytes = N * B / 8.0
    make = {
        "log_D": lambda: np.log(D_fp + D_qat),
        "log_N": lambda: np.log(N),
        "B_ln2": lambda: B * LN2,
        "log_S_fp": lambda: np.log(D_fp / param_bytes),
        "log_S_qat": lambda: np.log(D_qat / param_bytes),
    }
    with np.errstate(divide="ignore"):
        return np.stack([by_name[n] if n in by_name else make[n]() for n in names], axis=-1)


@dataclass(frozen=True)
class Term:
    """A term c · exp(−Σ e·z): `coef` names c; `powers` pairs exponent names with features."""

    coef: str
    powers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Law:
    """A law: its terms, the bounds of the fit and the box or grid its multi-starts come from.

    A parameter vector `x` holds log-coefficients and plain exponents in the order of
    `param_names`. The fit works on a *centred* vector (see `center`): each log-coefficient is
    replaced by the log of its term at the centre of the data, which decorrelates it from the
    term's exponents (log D ≈ 23 makes log β and γ nearly collinear otherwise). Bounds therefore
    are `exponent_bounds` for exponents and `term_range` for every term's value at that centre.
    `start_grid` is in uncentred internal units; with `grid_starts` the default starts are its
    full Cartesian product, otherwise `default_starts` Latin-hypercube points in its box.
    """

    name: str
    formula: str
    terms: tuple[Term, ...]
    exponent_bounds: Mapping[str, tuple[float, float]]
    term_range: tuple[float, float]
    start_grid: Mapping[str, tuple[float, ...]]
    grid_starts: bool
    default_starts: int
    fp_only: bool  # True: fits full-precision rows only; False: fits QAT rows only
    # The number formats the law speaks for; the first is the base, every other one has a factor
    # on each quantization term (`with_formats`).
    formats: tuple[str, ...] = PLAIN_FORMATS
    _index: dict = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names = [n for t in self.terms for n in (t.coef, *(e for e, _ in t.powers))]
        pairs = [(k, f) for k, t in enumerate(self.terms) for _, f in t.powers]
        if len(set(names)) != len(names) or len(set(pairs)) != len(pairs):
            raise AnalysisError(
                f"law {self.name!r}: each parameter, and each feature in a term, must appear once"
            )
        format_features = tuple(FORMAT_FEATURE + f for f in self.formats[1:])
        used = tuple(
            f
            for f in (*FEATURES, *format_features)
            if any(f == g for t in self.terms for _, g in t.powers)
        )
        feat = {f: i for i, f in enumerate(used)}
        pos = {n: i for i, n in enumerate(names)}
        occ = [(pos[e], k, feat[f]) for k, t in enumerate(self.terms) for e, f in t.powers]
        index = {
            "names": tuple(names),
            "features": used,
            "coef": np.array([pos[t.coef] for t in self.terms]),
            "exp": np.array([o[0] for o in occ], dtype=int),
            "exp_term": np.array([o[1] for o in occ], dtype=int),
            "exp_feat": np.array([o[2] for o in occ], dtype=int),
        }
        object.__setattr__(self, "_index", index)

    @property
    def param_names(self) -> tuple[str, ...]:
        return self._index["names"]

    @property
    def coef_names(self) -> tuple[str, ...]:
        return tuple(t.coef for t in self.terms)

    @property
    def factor_names(self) -> tuple[str, ...]:
        """The format factors: parameters on a "fmt.<format>" feature (none for the base)."""
        return tuple(e for t in self.terms for e, f in t.powers if f.startswith(FORMAT_FEATURE))

    @property
    def quantization_terms(self) -> tuple[str, ...]:
        """The coefficients of the terms with a bit width: those a format factor scales."""
        return tuple(t.coef for t in self.terms if any(f == "B_ln2" for _, f in t.powers))

    @property
    def _log_scaled(self) -> set[str]:
        """Parameters held as logs internally: coefficients and format factors (both > 0)."""
        return {*self.coef_names, *self.factor_names}

    def with_formats(self, formats: Sequence[str]) -> Law:
        """This law for runs of several number formats, `formats[0]` the base.

        Each other format f gets one factor per quantization term (a term with a bit width:
        θ, φ and λ), `theta.f`, `phi.f`, `lambda.f`: format f's term is the base format's at the
        same bits per weight B (scale overhead counted), tokens and size, times that factor. The
        exponents are shared: a format changes how large each penalty is, not how it scales.
        One factor per term, not one for all three, because a common factor on every QAT term
        leaves the loss-optimal QAT fraction where it was (the Chinchilla part does not depend on
        the fraction), which would decide by construction whether f* differs between formats.
        """
        formats = tuple(formats)
        if not formats or len(set(formats)) != len(formats):
            raise AnalysisError(f"formats {list(formats)}: need one or more distinct names")
        if self.formats != PLAIN_FORMATS:
            raise AnalysisError(f"law {self.name!r} already has formats {list(self.formats)}")
        if formats == PLAIN_FORMATS:
            return self
        if self.fp_only:
            raise AnalysisError(f"law {self.name!r} has no bit width, so no number format")
        others = formats[1:]
        scaled = self.quantization_terms
        terms = tuple(
            Term(t.coef, (*t.powers, *((f"{t.coef}.{f}", FORMAT_FEATURE + f) for f in others)))
            if t.coef in scaled
            else t
            for t in self.terms
        )
        factors = [f"{c}.{f}" for c in scaled for f in others]
        formula = (
            f"{self.formula}; for a run of format f ≠ {formats[0]}, the "
            f"{', '.join(scaled)} terms times {', '.join(c + '.f' for c in scaled)}"
        )
        log_range = (math.log(FACTOR_RANGE[0]), math.log(FACTOR_RANGE[1]))
        return replace(
            self,
            terms=terms,
            exponent_bounds={**self.exponent_bounds, **dict.fromkeys(factors, log_range)},
            # Starts: factors between 1/e and e (internal units are logs).
            start_grid={**self.start_grid, **dict.fromkeys(factors, (-1.0, 1.0))},
            formula=formula,
            formats=formats,
        )

    @property
    def n_features(self) -> int:
        return len(self._index["features"])

    def to_internal(self, params: Mapping[str, float]) -> np.ndarray:
        """Natural-unit parameters → internal vector (log of each coefficient)."""
        missing = [n for n in self.param_names if n not in params]
        if missing:
            raise AnalysisError(
                f"law {self.name!r} needs parameters {missing}; got {sorted(params)}"
            )
        coefs = self._log_scaled
        x = []
        for n in self.param_names:
            v = float(params[n])
            if not math.isfinite(v) or (n in coefs and v <= 0):
                allowed = "a finite number > 0" if n in coefs else "a finite number"
                raise AnalysisError(f"parameter {n}={v}; must be {allowed}")
            x.append(math.log(v) if n in coefs else v)
        return np.array(x)

    def from_internal(self, x: np.ndarray) -> dict[str, float]:
        """Internal vector → natural-unit parameters keyed by name."""
        coefs = self._log_scaled
        return {
            n: float(math.exp(v) if n in coefs else v)
            for n, v in zip(self.param_names, x, strict=True)
        }

    def features(
        self,
        N: ArrayLike,
        D_fp: ArrayLike,
        D_qat: ArrayLike,
        B: ArrayLike,
        fmt: ArrayLike | None = None,
    ) -> np.ndarray:
        """The log-features this law uses (`Z` below), shape (..., F), from broadcastable arrays;
        `fmt` names each run's format (default: the base format)."""
        fmt = self.formats[0] if fmt is None else fmt
        unknown = sorted(set(np.asarray(fmt, dtype=object).ravel()) - set(self.formats))
        if unknown:
            raise AnalysisError(
                f"format {', '.join(map(str, unknown))}: the {self.name} law speaks for formats "
                f"{', '.join(self.formats)} only"
            )
        return features(N, D_fp, D_qat, B, self._index["features"], fmt)

    def _shift(self, x: np.ndarray, mu: np.ndarray) -> np.ndarray:
        ix = self._index
        shift = np.zeros(len(self.terms))
        np.add.at(shift, ix["exp_term"], x[ix["exp"]] * mu[ix["exp_feat"]])
        return shift

    def center(self, x: np.ndarray, mu: np.ndarray) -> np.ndarray:
        """Internal vector → centred vector for features centred at `mu` (Z − mu).

        log c_k − Σ e·z = (log c_k − Σ e·mu) − Σ e·(z − mu): same predictions, better conditioned.
        """
        xc = np.array(x, dtype=float)
        xc[self._index["coef"]] -= self._shift(xc, mu)
        return xc

    def uncenter(self, xc: np.ndarray, mu: np.ndarray) -> np.ndarray:
        """Inverse of `center`."""
        x = np.array(xc, dtype=float)
        x[self._index["coef"]] += self._shift(x, mu)
        return x

    def centred_bounds(self) -> list[tuple[float, float]]:
        """L-BFGS-B bounds for the centred vector (a format factor's are on its log)."""
        log_range = (math.log(self.term_range[0]), math.log(self.term_range[1]))
        coefs = set(self.coef_names)
        return [log_range if n in coefs else self.exponent_bounds[n] for n in self.param_names]

    def _log_terms(self, x: np.ndarray, Z: np.ndarray) -> np.ndarray:
        """(K, n) log of each term, log c_k − Σ e·z, for features Z of shape (n, F).

        Term-major, so that the log-sum-exp below reduces over rows: several times faster than
        reducing the short last axis of an (n, K) array, and this is the fit's inner loop.
        """
        ix = self._index
        W = np.zeros((len(self.terms), self.n_features))
        W[ix["exp_term"], ix["exp_feat"]] = x[ix["exp"]]
        return x[ix["coef"], None] - W @ Z.T

    def log_loss(self, x: np.ndarray, Z: np.ndarray) -> np.ndarray:
        """Predicted log-loss for internal parameters `x` at features `Z` (..., F) of `features`."""
        Z = np.asarray(Z, dtype=float)
        # invalid: 0·(−inf) where an exponent is 0 at S = 0, or −inf − (−inf) in the log-sum-exp.
        with np.errstate(invalid="ignore"):
            T = self._log_terms(np.asarray(x, dtype=float), Z.reshape(-1, Z.shape[-1]))
            m = T.max(axis=0)
            out = m + np.log(np.exp(T - m).sum(axis=0))
        return out.reshape(Z.shape[:-1])

    def log_loss_grad(
        self, x: np.ndarray, Z: np.ndarray
    ) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
        """Log-loss at n runs (Z of shape (n, F)) and its pullback v ↦ Σ_i v_i ∂ log L_i / ∂x.

        ∂ log L / ∂ log c_k is term k's share of the loss (a softmax), and ∂ log L / ∂e = −share
        times the feature the exponent multiplies. A pullback, not the (n, P) Jacobian, because the
        fit only needs gradients of sums and this is the cheap way to get them.
        """
        ix = self._index
        T = self._log_terms(np.asarray(x, dtype=float), Z)
        m = T.max(axis=0)
        E = np.exp(T - m)
        s = E.sum(axis=0)

        def pullback(v: np.ndarray) -> np.ndarray:
            vw = E * (v / s)  # (K, n): v times each term's share
            grad = np.empty(len(self.param_names))
            grad[ix["coef"]] = vw.sum(axis=1)
            grad[ix["exp"]] = -(vw @ Z)[ix["exp_term"], ix["exp_feat"]]
            return grad

        return m + np.log(s), pullback

    def loss(
        self,
        params: Mapping[str, float],
        N: ArrayLike,
        D_fp: ArrayLike,
        D_qat: ArrayLike,
        B: ArrayLike,
        fmt: ArrayLike | None = None,
    ) -> np.ndarray:
        """Predicted loss (natural units) at runs given by broadcastable arrays (`fmt`: each
        run's number format, default the base format)."""
        Z = self.features(N, D_fp, D_qat, B, fmt)
        return np.exp(self.log_loss(self.to_internal(params), Z))

    def fp_part(self, params: Mapping[str, float]) -> dict[str, float]:
        """Parameters of the Chinchilla part α + β/D^γ + ζ/N^η (the B → ∞ limit of the law)."""
        return {n: params[n] for n in CHINCHILLA.param_names}


# Every term's value at the centre of the data: from negligible to far above any LM loss (nats).
_TERM_RANGE = (1e-8, 1e3)

CHINCHILLA = Law(
    name="chinchilla",
    formula="L = α + β/D_total^γ + ζ/N^η",
    terms=(
        Term("alpha"),
        Term("beta", (("gamma", "log_D"),)),
        Term("zeta", (("eta", "log_N"),)),
    ),
    exponent_bounds={"gamma": (0.0, 3.0), "eta": (0.0, 3.0)},
    term_range=_TERM_RANGE,
    # The grid of Hoffmann et al. (2022) as replicated by Epoch AI: 5·6·5·6·5 = 4,500 starts.
    start_grid={
        "alpha": (-1.0, -0.5, 0.0, 0.5, 1.0),
        "beta": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
        "gamma": (0.0, 0.5, 1.0, 1.5, 2.0),
        "zeta": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
        "eta": (0.0, 0.5, 1.0, 1.5, 2.0),
    },
    grid_starts=True,
    default_starts=4500,
    fp_only=True,
)

QAT = Law(
    name="qat",
    formula=(
        "L = α + β/D_total^γ + ζ/N^η + θ·2^(−κB) + φ·2^(−χB)/(N^ψ·S_qat^ω)"
        " + λ·2^(−μB)/(N^ν·S_fp^ξ·S_qat^ρ)"
    ),
    terms=(
        *CHINCHILLA.terms,
        Term("theta", (("kappa", "B_ln2"),)),
        Term("phi", (("chi", "B_ln2"), ("psi", "log_N"), ("omega", "log_S_qat"))),
        Term(
            "lambda", (("mu", "B_ln2"), ("nu", "log_N"), ("xi", "log_S_fp"), ("rho", "log_S_qat"))
        ),
    ),
    exponent_bounds={
        **CHINCHILLA.exponent_bounds,
        "kappa": (0.0, 4.0),
        "chi": (0.0, 4.0),
        "psi": (-1.0, 2.0),
        "omega": (0.0, 3.0),
        "mu": (0.0, 4.0),
        "nu": (-1.0, 2.0),
        "xi": (0.0, 3.0),
        "rho": (-1.0, 3.0),
    },
    term_range=_TERM_RANGE,
    # Box (low, high) for Latin-hypercube starts; 16 dimensions are too many for a full grid.
    start_grid={
        "alpha": (-1.0, 1.0),
        "beta": (0.0, 20.0),
        "gamma": (0.0, 1.5),
        "zeta": (0.0, 20.0),
        "eta": (0.0, 1.5),
        "theta": (-5.0, 1.0),
        "kappa": (0.0, 2.0),
        "phi": (-5.0, 8.0),
        "chi": (0.0, 2.0),
        "psi": (-0.5, 1.0),
        "omega": (0.0, 1.5),
        "lambda": (-5.0, 8.0),
        "mu": (0.0, 2.0),
        "nu": (-0.5, 1.0),
        "xi": (0.0, 1.5),
        "rho": (-0.5, 1.5),
    },
    grid_starts=False,
    default_starts=1000,
    fp_only=False,
)

LAWS = {law.name: law for law in (CHINCHILLA, QAT)}


def get_law(name: str) -> Law:
    """The law called `name` (one of `LAWS`)."""
    try:
        return LAWS[name]
    except KeyError:
        raise AnalysisError(f"unknown law {name!r}; allowed: {', '.join(LAWS)}") from None


def format_order(names: Iterable[str]) -> tuple[str, ...]:
    """The distinct formats of `names` in a law's order: the integer family first (the base
    when present), then the others sorted by name."""
    present = set(names)
    return tuple(sorted(present, key=lambda f: (f != INT_FORMAT, f)))


def bits_key(b: float) -> str:
    """How a bit width is written as a JSON key: 4 → "4", 1.58 → "1.58"."""
    return f"{float(b):g}"


@dataclass
class FittedLaw:
    """A law with fitted parameters and how well it fits; saved and loaded as JSON."""

    law: Law
    params: dict[str, float]
    r2: float
    r2_by_bits: dict[str, float]
    n_points: int
    settings: dict
    ci: dict[str, tuple[float, float]] | None = None
    # The ranges of the fitted runs (`analysis.domain.domain_of`); None for a law saved before
    # domains were recorded, whose predictions then cannot say when they extrapolate.
    domain: dict | None = None

    def loss(
        self,
        N: ArrayLike,
        D_fp: ArrayLike,
        D_qat: ArrayLike,
        B: ArrayLike,
        fmt: ArrayLike | None = None,
    ) -> np.ndarray:
        """Predicted loss at runs given by broadcastable arrays (tokens, parameters, bits per
        weight; `fmt`: each run's number format, default the law's base format)."""
        return self.law.loss(self.params, N, D_fp, D_qat, B, fmt)

    def predict_frame(self, runs: Mapping) -> np.ndarray:
        """Predicted loss for each row of a table with columns N, D_fp, D_qat, B (and format)."""
        return self.loss(runs["N"], runs["D_fp"], runs["D_qat"], runs["B"], runs.get("format"))

    def to_dict(self) -> dict:
        # A law of the integer family alone writes no "formats": its files stay as they were.
        formats = {} if self.law.formats == PLAIN_FORMATS else {"formats": list(self.law.formats)}
        return {
            "law": self.law.name,
            **formats,
            "formula": self.law.formula,
            "params": self.params,
            "r2": self.r2,
            "r2_by_bits": self.r2_by_bits,
            "n_points": self.n_points,
            "settings": self.settings,
            "ci": None if self.ci is None else {k: list(v) for k, v in self.ci.items()},
            "domain": self.domain,
        }

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n", "utf-8")
        return path

    @classmethod
    def from_dict(cls, d: Mapping) -> FittedLaw:
        for key in ("law", "params"):
            if key not in d:
                raise AnalysisError(f"law JSON lacks key {key!r}; needs 'law' and 'params'")
        formats = d.get("formats", PLAIN_FORMATS)
        if not (isinstance(formats, list | tuple) and all(isinstance(f, str) for f in formats)):
            raise AnalysisError(f"law JSON's formats={formats!r}; must be a list of format names")
        law = get_law(d["law"]).with_formats(formats)
        law.to_internal(d["params"])  # validates names and positivity
        ci = d.get("ci")
        domain = d.get("domain")
        if domain is not None:
            missing = [k for k in DOMAIN_KEYS if k not in domain]
            if missing:
                raise AnalysisError(f"law JSON's domain lacks {missing}; refit to rewrite it")
        return cls(
            law=law,
            params={n: float(d["params"][n]) for n in law.param_names},
            r2=float(d.get("r2", math.nan)),
            r2_by_bits={str(k): float(v) for k, v in d.get("r2_by_bits", {}).items()},
            n_points=int(d.get("n_points", 0)),
            settings=dict(d.get("settings", {})),
            ci=None if ci is None else {k: (float(v[0]), float(v[1])) for k, v in ci.items()},
            domain=None if domain is None else dict(domain),
        )


def load_law(path: str | Path) -> FittedLaw:
    """Read a fitted law written by `FittedLaw.save`."""
    path = Path(path)
    try:
        d = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise AnalysisError(f"law file {str(path)!r} does not exist") from None
    except json.JSONDecodeError as e:
        raise AnalysisError(f"law file {str(path)!r} is not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise AnalysisError(f"law file {str(path)!r} must hold a JSON object")
    return FittedLaw.from_dict(d)
