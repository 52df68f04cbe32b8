"""Synthetic, paper-shaped grids of runs from known coefficients (for tests, benches, notebooks).

ILLUSTRATIVE ONLY: the paper's fitted coefficients are not public. `TRUE_QAT_PARAMS` were chosen
by us so that, as in the paper, the loss-optimal QAT fraction is interior and grows with tokens
per parameter byte (from ≈ 0.2 at S = 100 to ≈ 0.5 at S = 1e4), low bit widths pay more, and the
Chinchilla part is Hoffmann et al.'s published approach-3 fit.

    python -m analysis.synthetic --out analysis/data/synthetic_grid.csv \
        --law-out analysis/data/example_qat_law.json --bootstrap 100
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.law import CHINCHILLA, FP_BITS, QAT

# Hoffmann et al. (2022), approach 3: L = E + A/N^a + B/D^b, in our names.
CHINCHILLA_PARAMS = {"alpha": 1.69, "beta": 410.7, "gamma": 0.28, "zeta": 406.4, "eta": 0.34}

TRUE_QAT_PARAMS = {
    **CHINCHILLA_PARAMS,
    "theta": 0.3,  # irreducible QAT error: 0.17 nats at 1 bit, 0.03 at 4, 0.01 at 6
    "kappa": 0.8,
    "phi": 10.0,  # pure QAT penalty, falls with QAT tokens per parameter byte
    "chi": 1.0,
    "psi": 0.1,
    "omega": 0.6,
    "lambda": 550.0,  # FP/QAT interaction, falls faster with S than the pure penalty, so the
    "mu": 1.1,  # optimal fraction grows with S
    "nu": 0.1,
    "xi": 1.0,
    "rho": 0.1,
}

# Format effects, as factors on the quantization terms of the integer family at the same bits per
# weight (`Law.with_formats`); ours, illustrative: MXFP4 with a smaller irreducible error and pure
# QAT penalty but a larger FP/QAT interaction, so its optimal QAT fraction is smaller than INT4's.
TRUE_FORMAT_FACTORS = {"mxfp4": {"theta": 0.5, "phi": 0.7, "lambda": 1.6}}

SIZES = (5e7, 1e8, 2e8, 4e8)  # non-embedding parameters
BITS = (1.0, 2.0, 4.0, 6.0)
TOKENS_PER_PARAM = (10.0, 25.0, 60.0, 150.0, 400.0)  # D_total / N
FRACTIONS = (0.05, 0.1, 0.2, 0.3, 0.45, 0.6, 0.8)


def _noisy(loss: np.ndarray, noise: float, rng: np.random.Generator) -> np.ndarray:
    """Multiplicative log-normal noise: a relative error of about `noise` per run."""
    return loss * np.exp(rng.normal(0.0, noise, size=np.shape(loss)))


def qat_grid(
    params: Mapping[str, float] = TRUE_QAT_PARAMS,
    sizes: Sequence[float] = SIZES,
    bits: Sequence[float] = BITS,
    tokens_per_param: Sequence[float] = TOKENS_PER_PARAM,
    fractions: Sequence[float] = FRACTIONS,
    noise: float = 0.002,
    seed: int = 0,
    fp_rows: bool = True,
) -> pd.DataFrame:
    """A grid N × B × D_total × QAT fraction with losses from the qat law (plus noise).

    `fp_rows` adds one full-precision run (B = 16, D_qat = 0) per (N, D_total), whose loss is the
    law's Chinchilla part, as a real grid's FP baselines would be.
    """
    rows = [
        {"N": n, "B": b, "D_fp": (1 - f) * r * n, "D_qat": f * r * n, "qat_frac": f}
        for n, b, r, f in itertools.product(sizes, bits, tokens_per_param, fractions)
    ]
    df = pd.DataFrame(rows)
    df["loss"] = QAT.loss(params, df.N, df.D_fp, df.D_qat, df.B)
    if fp_rows:
        fp = pd.DataFrame(
            [
                {"N": n, "B": FP_BITS, "D_fp": r * n, "D_qat": 0.0, "qat_frac": 0.0}
                for n, r in itertools.product(sizes, tokens_per_param)
            ]
        )
        fp["loss"] = CHINCHILLA.loss(QAT.fp_part(params), fp.N, fp.D_fp, fp.D_qat, fp.B)
        df = pd.concat([df, fp], ignore_index=True)
    df["D_total"] = df.D_fp + df.D_qat
    df["fusion"] = False
    df["loss"] = _noisy(df["loss"].to_numpy(), noise, np.random.default_rng(seed))
    return df


def format_params(
    factors: Mapping[str, Mapping[str, float]], params: Mapping[str, float] = TRUE_QAT_PARAMS
) -> dict[str, float]:
    """The parameters of the qat law with format factors: `params` plus "<term>.<format>" for
    each format's factor on each quantization term (`factors[format][term]`)."""
    return {**params, **{f"{t}.{f}": v for f, by in factors.items() for t, v in by.items()}}


def format_grid(
    factors: Mapping[str, Mapping[str, float]] = TRUE_FORMAT_FACTORS,
    params: Mapping[str, float] = TRUE_QAT_PARAMS,
    sizes: Sequence[float] = SIZES,
    bits: Sequence[float] = BITS,
    tokens_per_param: Sequence[float] = TOKENS_PER_PARAM,
    fractions: Sequence[float] = FRACTIONS,
    noise: float = 0.002,
    seed: int = 0,
    fp_rows: bool = False,
) -> pd.DataFrame:
    """Classic runs of the integer family at `bits` and of each format of `factors` at its bits
    per weight (block scales counted, from qat.quant.formats), with a `format` column and losses
    from the qat law whose format factors are `factors` (plus noise).

    `fp_rows` adds what a trained grid's table also holds for the FP anchor of
    `analysis.anchored_fit`: one FP-only run per (N, D_total) and each classic run's `fp_loss`,
    the Chinchilla part at (N, D_fp)."""
    from qat.quant.formats import FLOAT_FORMATS, INT_FORMAT  # torch: only for format grids

    per_format = [(INT_FORMAT, b) for b in bits] + [(f, FLOAT_FORMATS[f].bits) for f in factors]
    rows = [
        {"N": n, "B": b, "format": f, "D_fp": (1 - q) * r * n, "D_qat": q * r * n, "qat_frac": q}
        for n, (f, b), r, q in itertools.product(sizes, per_format, tokens_per_param, fractions)
    ]
    df = pd.DataFrame(rows)
    law = QAT.with_formats((INT_FORMAT, *factors))
    loss = law.loss(format_params(factors, params), df.N, df.D_fp, df.D_qat, df.B, df["format"])
    df["D_total"] = df.D_fp + df.D_qat
    df["fusion"] = False
    rng = np.random.default_rng(seed)
    df["loss"] = _noisy(loss, noise, rng)
    if not fp_rows:
        return df
    chinchilla = QAT.fp_part(params)
    df["fp_loss"] = _noisy(CHINCHILLA.loss(chinchilla, df.N, df.D_fp, 0.0, FP_BITS), noise, rng)
    fp = pd.DataFrame(
        [
            {"N": n, "B": FP_BITS, "format": INT_FORMAT, "D_fp": r * n, "D_qat": 0.0}
            for n, r in itertools.product(sizes, tokens_per_param)
        ]
    )
    fp["qat_frac"], fp["D_total"], fp["fusion"] = 0.0, fp.D_fp, False
    fp["loss"] = _noisy(CHINCHILLA.loss(chinchilla, fp.N, fp.D_fp, 0.0, FP_BITS), noise, rng)
    return pd.concat([df, fp], ignore_index=True)


def fused_grid(
    params: Mapping[str, float] = TRUE_QAT_PARAMS,
    sizes: Sequence[float] = SIZES,
    bits: Sequence[float] = BITS,
    tokens_per_param: Sequence[float] = TOKENS_PER_PARAM,
    fractions: Sequence[float] = (0.1, 0.2, 0.3),
    fp_gain: float = 0.1,
    noise: float = 0.002,
    seed: int = 1,
) -> pd.DataFrame:
    """Fused-pipeline runs (fusion=True) of the cells of `qat_grid`, from a known fusion effect.

    Fusing the FP cooldown into QAT is modelled as FP tokens that count `fp_gain` more: the fused
    loss is the qat law's at D_fp·(1 + fp_gain) (same D_fp, D_qat and D_total columns as the
    classic cell). `fp_gain` > 0 makes fusion better, < 0 worse, 0 equal up to the noise.
    """
    if not fp_gain > -1:
        raise ValueError(f"fp_gain={fp_gain}; must be > -1")
    df = qat_grid(params, sizes, bits, tokens_per_param, fractions, noise=0.0, fp_rows=False)
    df["loss"] = QAT.loss(params, df.N, df.D_fp * (1 + fp_gain), df.D_qat, df.B)
    df["fusion"] = True
    df["loss"] = _noisy(df["loss"].to_numpy(), noise, np.random.default_rng(seed))
    return df


def seeded_grid(
    params: Mapping[str, float] = TRUE_QAT_PARAMS,
    sizes: Sequence[float] = SIZES,
    bits: Sequence[float] = BITS,
    tokens_per_param: Sequence[float] = TOKENS_PER_PARAM,
    fractions: Sequence[float] = FRACTIONS,
    seeds: Sequence[int] = (0, 1),
    seed_shift: float = 0.004,
    noise: float = 0.001,
    seed: int = 0,
) -> pd.DataFrame:
    """`qat_grid` (with its FP rows) repeated per training seed, noised the way seeds act.

    A training seed shifts every run that shares its FP trunk, all bit widths and fractions of one
    (N, D_total), by a common relative amount (`seed_shift`); each run adds its own `noise` on
    top. Classic rows carry `fp_loss`, the FP model's loss at (N, D_fp) (the end of the FP phase,
    shared by every bit width of one seed), as a trainer's runs table does.
    """
    rng = np.random.default_rng(seed)
    frames = []
    for s in seeds:
        df = qat_grid(params, sizes, bits, tokens_per_param, fractions, noise=0.0)
        df["seed"] = s
        cell = df.groupby(["N", "D_total"]).ngroup().to_numpy()
        shift = np.exp(rng.normal(0.0, seed_shift, size=cell.max() + 1))[cell]
        df["loss"] = _noisy(df["loss"].to_numpy() * shift, noise, rng)
        fp = CHINCHILLA.loss(QAT.fp_part(params), df.N, df.D_fp, 0.0, FP_BITS) * shift
        trunk = df.groupby(["N", "D_fp"]).ngroup().to_numpy()
        fp_noise = np.exp(rng.normal(0.0, noise, size=trunk.max() + 1))[trunk]
        df["fp_loss"] = np.where(df.B < FP_BITS, fp * fp_noise, df["loss"])
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def qat_phase_grid(
    qat_token_factor: Mapping[float, float],
    params: Mapping[str, float] = TRUE_QAT_PARAMS,
    sizes: Sequence[float] = SIZES,
    bits: Sequence[float] = (1.0, 4.0),
    tokens_per_param: Sequence[float] = (80.0, 320.0),
    fractions: Sequence[float] = (0.05, 0.1, 0.2, 0.35, 0.5, 0.65, 0.8, 0.9),
    noise: float = 1e-4,
    seed: int = 0,
) -> pd.DataFrame:
    """Classic runs of `qat_grid` once per QAT-phase variant: each QAT peak learning-rate ratio
    of `qat_token_factor` (keys; 1.0 is the baseline) with Adam's moments kept and reset, in
    columns `qat_lr_ratio` and `qat_reset_moments`.

    The hidden law: a ratio's QAT tokens count `qat_token_factor[ratio]` times (the loss is the
    qat law's at D_qat·factor), which moves f*; resetting the moments changes nothing."""
    rng = np.random.default_rng(seed)
    frames = []
    for ratio, factor in qat_token_factor.items():
        for reset in (False, True):
            df = qat_grid(params, sizes, bits, tokens_per_param, fractions, 0.0, fp_rows=False)
            df["loss"] = _noisy(
                QAT.loss(params, df.N, df.D_fp, df.D_qat * factor, df.B), noise, rng
            )
            frames.append(df.assign(qat_lr_ratio=ratio, qat_reset_moments=reset))
    return pd.concat(frames, ignore_index=True)


def chinchilla_grid(
    params: Mapping[str, float] = CHINCHILLA_PARAMS,
    sizes: Sequence[float] = (4e7, 1e8, 3e8, 1e9, 3e9, 1e10),
    tokens_per_param: Sequence[float] = (2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0),
    noise: float = 0.002,
    seed: int = 0,
) -> pd.DataFrame:
    """Full-precision runs (B = 16, D_qat = 0) with losses from the chinchilla law (plus noise)."""
    df = pd.DataFrame(
        [{"N": n, "D_fp": r * n} for n, r in itertools.product(sizes, tokens_per_param)]
    )
    df["D_qat"] = 0.0
    df["D_total"] = df.D_fp
    df["B"] = FP_BITS
    df["fusion"] = False
    loss = CHINCHILLA.loss(params, df.N, df.D_fp, df.D_qat, df.B)
    df["loss"] = _noisy(loss, noise, np.random.default_rng(seed))
    return df


ILLUSTRATIVE_NOTE = (
    "ILLUSTRATIVE: fitted to the synthetic grid of analysis.synthetic (true_params), not to real "
    "runs; these are not the paper's coefficients, which are not public."
)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Write the default synthetic QAT grid as CSV.")
    ap.add_argument("--out", required=True, type=Path, help="CSV file to write")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--law-out", type=Path, help="also fit the qat law and write it here")
    ap.add_argument("--bootstrap", type=int, default=0, help="resamples for the law's CIs")
    args = ap.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    grid = qat_grid(seed=args.seed)
    grid.to_csv(args.out, index=False)
    print(f"wrote {args.out}")
    if args.law_out:
        from analysis.fit import fit  # only this path needs the fitter

        fitted = fit(grid, "qat", bootstrap=args.bootstrap, seed=args.seed, progress=True).fitted
        fitted.settings |= {"note": ILLUSTRATIVE_NOTE, "true_params": TRUE_QAT_PARAMS}
        fitted.save(args.law_out)
        print(f"wrote {args.law_out}")


if __name__ == "__main__":
    main()
