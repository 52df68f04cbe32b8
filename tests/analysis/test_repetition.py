"""analysis.repetition on synthetic tables with a known answer: the gap's slope with epochs per
model size (a known trend per size recovered inside its interval), and paired data fractions."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest

from analysis.repetition import data_pairs, gap_trend, repetition

# Per size: the gap's true slope in nats per doubling of epochs.
SLOPES = {1e6: 0.03, 4e6: 0.0, 1.6e7: -0.02}
EPOCHS = (0.25, 1.0, 4.0, 16.0)
SPLIT = 1e7  # train tokens


def gap_table(noise: float = 0.004, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    families = itertools.product((1.0, 4.0, 16.0), (0.2, 0.5), ("0", "1"))
    for n, (bits, frac, run_seed) in itertools.product(SLOPES, list(families)):
        offset = rng.uniform(0.2, 0.4)  # the family's gap at any epochs (other documents)
        for epochs in EPOCHS:
            loss = 3.0 + rng.uniform(0, 1)
            gap = offset + SLOPES[n] * math.log2(epochs) + rng.normal(0, noise)
            rows.append(
                {
                    "N": n,
                    "D_total": epochs * SPLIT,
                    "B": bits,
                    "qat_frac": frac,
                    "seed": run_seed,
                    "fusion": False,
                    "loss": loss,
                    "train_loss": loss - gap,
                    "epochs": epochs,
                    "train_fraction": 1.0,
                }
            )
    return pd.DataFrame(rows)


def test_the_gap_trend_recovers_each_sizes_slope():
    trend = gap_trend(gap_table(), bootstrap=300)
    assert trend["available"]
    by_size = {s["N"]: s for s in trend["sizes"]}
    expected = {1e6: "grows", 4e6: "no clear trend", 1.6e7: "shrinks"}
    for n, slope in SLOPES.items():
        s = by_size[n]
        assert s["lo"] <= slope <= s["hi"], (n, s)
        assert abs(s["slope_per_doubling"] - slope) < 0.003
        assert s["verdict"] == expected[n]
        assert (s["runs"], s["families"], s["epochs_min"], s["epochs_max"]) == (48, 12, 0.25, 16)
        assert [b["epochs"] for b in s["budgets"]] == list(EPOCHS)


def test_a_size_at_one_budget_has_no_trend():
    table = gap_table()
    one = table[table.epochs == 4.0]
    (s, *_) = gap_trend(one, bootstrap=20)["sizes"]
    assert math.isnan(s["slope_per_doubling"]) and s["verdict"].startswith("one number of epochs")


def half_data_table() -> pd.DataFrame:
    """Two cells on the whole split at seeds 0 and 1, each again at seed 0 on half of it, and
    one half-data run whose full-data cell is missing."""
    full = pd.DataFrame(
        {
            "N": [1e6] * 4,
            "D_total": [4e7] * 4,
            "B": [1.0, 1.0, 4.0, 4.0],
            "qat_frac": [0.5] * 4,
            "seed": ["0", "1", "0", "1"],
            "fusion": False,
            "loss": [4.40, 4.42, 3.90, 3.93],
            "train_loss": [4.1, 4.1, 3.5, 3.5],
            "epochs": [2.0] * 4,
            "train_fraction": 1.0,
        }
    )
    half = full[full.seed == "0"].assign(
        loss=[4.45, 3.91], train_loss=[4.0, 3.4], epochs=4.0, train_fraction=0.5
    )
    orphan = half.iloc[:1].assign(qat_frac=0.8)
    return pd.concat([full, half, orphan], ignore_index=True)


def test_half_data_runs_are_paired_with_their_full_data_cells():
    result = data_pairs(half_data_table())
    assert result["available"] and result["unpaired"] == 1
    pairs = {p["B"]: p for p in result["pairs"]}
    assert pairs[1.0]["diff"] == pytest.approx(0.05) and pairs[4.0]["diff"] == pytest.approx(0.01)
    assert pairs[1.0]["diff_rel"] == pytest.approx(0.05 / 4.40)
    assert (pairs[1.0]["epochs"], pairs[1.0]["epochs_full"]) == (4.0, 2.0)
    assert pairs[1.0]["gap"] == pytest.approx(0.45) and pairs[1.0]["gap_full"] == pytest.approx(0.3)
    assert pairs[1.0]["seed_std_full"] == pytest.approx(np.std([4.40, 4.42], ddof=1))
    assert result["by_part"] == {
        "leading": {
            "pairs": 2,
            "mean_diff": pytest.approx(0.03),
            "mean_diff_rel": pytest.approx(np.mean([0.05 / 4.40, 0.01 / 3.90])),
        }
    }
    assert result["seed_std_median"] == pytest.approx(
        np.median([np.std([4.40, 4.42], ddof=1), np.std([3.90, 3.93], ddof=1)])
    )


def test_a_spread_part_is_paired_and_averaged_apart_from_a_leading_one():
    table = half_data_table().assign(train_part="leading")
    spread = table[(table.train_fraction < 1) & (table.qat_frac == 0.5)].assign(
        train_part="spread", loss=[4.38, 3.95]
    )
    result = data_pairs(pd.concat([table, spread], ignore_index=True))
    parts = {(p["B"], p["train_part"]): p["diff"] for p in result["pairs"]}
    assert parts == {
        (1.0, "leading"): pytest.approx(0.05),
        (4.0, "leading"): pytest.approx(0.01),
        (1.0, "spread"): pytest.approx(-0.02),
        (4.0, "spread"): pytest.approx(0.05),
    }
    assert result["by_part"]["leading"]["mean_diff"] == pytest.approx(0.03)
    assert result["by_part"]["spread"]["mean_diff"] == pytest.approx(0.015)
    assert result["by_part"]["spread"]["pairs"] == 2


def test_a_table_without_the_columns_says_so():
    old = half_data_table().drop(columns=["train_loss", "epochs", "train_fraction"])
    result = repetition(old)
    for part in ("gap_trend", "pairs"):
        assert result[part]["available"] is False
    assert result["gap_trend"]["why"].startswith("no train_loss, epochs column in this table")
    assert result["pairs"]["why"].startswith("no train_fraction column in this table")
    unknown = half_data_table().assign(epochs=np.nan)  # no run of the data recorded its size
    assert gap_trend(unknown)["why"].startswith("no run has an epochs value")
    full_only = half_data_table().query("train_fraction == 1")
    assert "no run on a train_fraction below 1" in data_pairs(full_only)["why"]
