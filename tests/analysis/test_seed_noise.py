"""Seed noise against fraction gaps, recovered from grids with a known seed shift and noise."""

from __future__ import annotations

import pytest

from analysis.seed_noise import seed_noise
from analysis.synthetic import seeded_grid

GRID = {
    "sizes": (5e7, 2e8),
    "bits": (1, 4),
    "tokens_per_param": (10, 160),
    "fractions": (0.1, 0.3, 0.5, 0.7),
}


def test_seed_shift_and_paired_noise_are_told_apart():
    runs = seeded_grid(**GRID, seeds=tuple(range(6)), seed_shift=0.005, noise=0.0005, seed=3)
    s = seed_noise(runs)
    assert s["available"] is True
    assert s["cells_with_seeds"] == 8 and s["runs_with_seeds"] == 8 * 4 * 6
    # A run's std across seeds is the shift and the noise together; pairing removes the shift.
    assert s["seed_std_rel_median"] == pytest.approx(0.005, rel=0.35)
    assert s["paired_std_rel"] == pytest.approx(0.0005, rel=0.2)
    assert s["paired_over_best_gap"] < s["seed_std_rel_median"] / s["best_gap_rel_median"]


def test_noise_far_above_the_fraction_gaps_makes_seeds_disagree_on_f_star():
    quiet = seed_noise(seeded_grid(**GRID, seeds=(0, 1, 2), seed_shift=0.005, noise=1e-6))
    loud = seed_noise(seeded_grid(**GRID, seeds=(0, 1, 2), seed_shift=0.005, noise=0.02))
    assert quiet["f_star_agree"] == quiet["f_star_cells"]  # a shift alone never moves f*
    assert loud["f_star_agree"] < loud["f_star_cells"]
    assert loud["paired_over_best_gap"] > 1 > quiet["paired_over_best_gap"]


def test_one_seed_is_unavailable():
    s = seed_noise(seeded_grid(**GRID, seeds=(0,)))
    assert s["available"] is False and "2 seeds" in s["why"]
