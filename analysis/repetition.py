"""What repeating the training data does: the train-validation gap against the passes over the
data (epochs), and cells trained again on a leading fraction of the train split against the
same cells on all of it.

The table is `analysis.collect`'s with its repetition columns: `train_loss` (the training loss
at the end of a run), `epochs` (D_total over the train tokens the run could read) and
`train_fraction` (1 for the whole split). A table collected before them gives each part as
unavailable, with the reason.

- **The gap's trend.** gap = loss − train_loss (validation minus training loss, both of the
  final model). Part of it is not over-fitting at all: the validation tokens are other
  documents, scored in corpus order, so the gap has an offset at any number of epochs. What
  repetition adds is how the gap *grows* with epochs. Per model size, runs are grouped into
  families that differ only in their budget and data fraction (same bits, format, QAT fraction,
  pipeline and seed), each family's offset is removed, and the slope of gap against log2(epochs)
  is pooled over families: nats of gap per doubling of the passes over the data. Its 95%
  interval resamples families (a cluster bootstrap).
- **Paired cells.** Each run on a fraction < 1 of the train split is matched with the run that
  differs from it only in that fraction; the difference of their validation losses is what
  seeing less data more often costs (positive: worse), set against the loss's spread over seeds
  of the same full-data cell where the table has seeds. The part (`train_part`, "leading" in a
  table without it) is kept apart: a leading part of a split stored in corpus order is also a
  different mix of sources, so only a spread part isolates repetition (docs/repro.md#data).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from analysis.grid_stats import Unavailable, unavailable

BOOTSTRAP = 1000
FRAC_DIGITS = 6
# What a run's family and pair share besides its size: every column of the table that names
# the cell, where present (a table may lack seed, format, data or vocab_size).
CELL_COLUMNS = ("B", "format", "qat_frac", "fusion", "seed", "data", "vocab_size")


def _missing(runs: pd.DataFrame, columns: tuple[str, ...]) -> Unavailable | None:
    absent = [c for c in columns if c not in runs.columns]
    if absent:
        return unavailable(
            f"no {', '.join(absent)} column in this table (collected before analysis.collect "
            "recorded it; collect the runs again from MLflow)"
        )
    return None


def _cells(runs: pd.DataFrame) -> pd.DataFrame:
    """The table with the columns that name a cell as comparable keys."""
    out = runs.copy()
    out["qat_frac"] = pd.to_numeric(out["qat_frac"]).round(FRAC_DIGITS)
    for column in ("seed", "data", "vocab_size", "format"):
        if column in out.columns:
            out[column] = out[column].astype(str)
    return out


def _keys(runs: pd.DataFrame) -> list[str]:
    return [c for c in CELL_COLUMNS if c in runs.columns]


def pooled_slope(x: np.ndarray, y: np.ndarray, family: np.ndarray) -> float:
    """The slope of y on x within families (labels 0..k-1; each family's own offset removed),
    pooled; NaN when no family has two different x."""
    counts = np.bincount(family)
    with np.errstate(invalid="ignore"):  # labels no row carries (in a resample) are not read
        cx = x - (np.bincount(family, x) / counts)[family]
        cy = y - (np.bincount(family, y) / counts)[family]
    sxx = float(cx @ cx)
    return float(cx @ cy) / sxx if sxx > 1e-12 else math.nan


def _verdict(lo: float, hi: float) -> str:
    if lo > 0:
        return "grows"
    if hi < 0:
        return "shrinks"
    return "no clear trend"


def gap_trend(
    runs: pd.DataFrame, bootstrap: int = BOOTSTRAP, seed: int = 0
) -> dict[str, Any] | Unavailable:
    """Per model size: the gap's slope per doubling of epochs with its 95% interval, and the
    mean gap at each (budget, data fraction)."""
    if (missing := _missing(runs, ("train_loss", "epochs", "qat_frac"))) is not None:
        return missing
    table = _cells(runs)
    table = table[np.isfinite(table.train_loss) & np.isfinite(table.epochs) & (table.epochs > 0)]
    if table.empty:
        if not np.isfinite(runs.epochs).any():
            return unavailable(
                "no run has an epochs value: none of this data recorded its train split's size "
                "(data_train_tokens, logged by runs since data.train_fraction exists)"
            )
        return unavailable("no run has both a train_loss and an epochs value")
    fraction = table.get("train_fraction", 1.0)
    table = table.assign(
        gap=table.loss - table.train_loss, log2_epochs=np.log2(table.epochs), fraction=fraction
    )
    keys = _keys(table)
    rng = np.random.default_rng(seed)
    sizes = []
    for n, runs_n in table.groupby("N"):
        family = runs_n.groupby(keys, dropna=False).ngroup().to_numpy()
        x, y = runs_n.log2_epochs.to_numpy(), runs_n.gap.to_numpy()
        slope = pooled_slope(x, y, family)
        budgets = (
            runs_n.groupby(["D_total", "fraction"])
            .agg(epochs=("epochs", "mean"), runs=("gap", "size"), gap=("gap", "mean"))
            .reset_index()
            .sort_values("epochs")
        )
        entry: dict[str, Any] = {
            "N": float(n),
            "model": str(runs_n["model"].iloc[0]) if "model" in runs_n else "",
            "runs": len(runs_n),
            "families": int(family.max()) + 1,
            "epochs_min": float(runs_n.epochs.min()),
            "epochs_max": float(runs_n.epochs.max()),
            "slope_per_doubling": slope,
            "lo": math.nan,
            "hi": math.nan,
            "verdict": "one number of epochs: no trend to measure",
            "budgets": budgets.rename(columns={"fraction": "train_fraction"}).to_dict("records"),
        }
        if math.isfinite(slope):
            ids = np.unique(family)
            members = [np.flatnonzero(family == i) for i in ids]
            draws = []
            for _ in range(bootstrap):
                picked = rng.integers(len(ids), size=len(ids))
                rows = np.concatenate([members[i] for i in picked])
                relabel = np.concatenate(
                    [np.full(len(members[i]), k) for k, i in enumerate(picked)]
                )
                draws.append(pooled_slope(x[rows], y[rows], relabel))
            finite = np.asarray([d for d in draws if math.isfinite(d)])
            entry["lo"], entry["hi"] = (float(q) for q in np.quantile(finite, [0.025, 0.975]))
            entry["verdict"] = _verdict(entry["lo"], entry["hi"])
        sizes.append(entry)
    return {"available": True, "bootstrap": bootstrap, "sizes": sizes}


def data_pairs(runs: pd.DataFrame) -> dict[str, Any] | Unavailable:
    """Each run on part of the train split against the same cell on all of it."""
    if (missing := _missing(runs, ("train_fraction", "qat_frac"))) is not None:
        return missing
    table = _cells(runs)
    keys = ["N", "D_total", *_keys(table)]
    full = table[table.train_fraction >= 1.0]
    reduced = table[table.train_fraction < 1.0]
    if reduced.empty:
        return unavailable("no run on a train_fraction below 1 in this table")
    paired = reduced.merge(full, on=keys, suffixes=("", "_full"))
    if paired.empty:
        return unavailable(
            f"none of the {len(reduced)} runs on part of the data has its full-data cell "
            "(same size, budget, bits, fraction, pipeline and seed) in this table"
        )
    spread_keys = [k for k in keys if k != "seed"]
    seeds = full.groupby(spread_keys, dropna=False).loss.agg(["std", "size"]).reset_index()
    paired = paired.merge(seeds, on=spread_keys, how="left")
    has_train = "train_loss" in paired.columns
    pairs = []
    for row in paired.itertuples(index=False):
        pair: dict[str, Any] = {
            "model": str(getattr(row, "model", "")),
            "N": float(row.N),
            "D_total": float(row.D_total),
            "B": float(row.B),
            "qat_frac": float(row.qat_frac),
            "seed": str(getattr(row, "seed", "")),
            "train_fraction": float(row.train_fraction),
            "train_part": str(getattr(row, "train_part", "leading")),
            "epochs": float(getattr(row, "epochs", math.nan)),
            "epochs_full": float(getattr(row, "epochs_full", math.nan)),
            "loss": float(row.loss),
            "loss_full": float(row.loss_full),
            "diff": float(row.loss - row.loss_full),
            "diff_rel": float(row.loss / row.loss_full - 1.0),
            "seed_std_full": float(row.std) if row.size >= 2 else math.nan,
        }
        if has_train:
            pair["gap"] = float(row.loss - row.train_loss)
            pair["gap_full"] = float(row.loss_full - row.train_loss_full)
        pairs.append(pair)
    noise = [p["seed_std_full"] for p in pairs if math.isfinite(p["seed_std_full"])]
    by_part = {}
    for part in sorted({p["train_part"] for p in pairs}):
        of_part = [p for p in pairs if p["train_part"] == part]
        by_part[part] = {
            "pairs": len(of_part),
            "mean_diff": float(np.mean([p["diff"] for p in of_part])),
            "mean_diff_rel": float(np.mean([p["diff_rel"] for p in of_part])),
        }
    return {
        "available": True,
        "pairs": pairs,
        "unpaired": len(reduced) - len(paired),
        "by_part": by_part,
        "seed_std_median": float(np.median(noise)) if noise else math.nan,
    }


def repetition(runs: pd.DataFrame, seed: int = 0) -> dict[str, Any]:
    """The report's section: the gap's trend with epochs and the paired data fractions."""
    return {"gap_trend": gap_trend(runs, seed=seed), "pairs": data_pairs(runs)}
