"""`analysis.fusion_stats` on constructed tables and on grids from the hidden law with a known
fusion effect (the fused pipeline's FP tokens count `fp_gain` more)."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from analysis.collect import prepare
from analysis.fusion_stats import CLAIM, compare_fusion, fusion_stats, matched_cells, verdict
from tests.analysis.helpers import HIDDEN_LAW, pipelines_grid

SIZES = (5e5, 1.5e6, 4e6, 1e7)
BITS = (1.0, 2.0, 4.0, 6.0)
TOKENS_PER_PARAM = (25.0, 100.0, 400.0)


def run(n: float, b: float, frac: float, loss: float, fused: bool, configured: bool = True):
    """One QAT run of 1e7 tokens; without `configured`, no qat_frac: the fraction is D_qat/D."""
    d = 1e7
    return {
        "N": n,
        "B": b,
        "D_fp": (1 - frac) * d,
        "D_qat": frac * d,
        "qat_frac": frac if configured else math.nan,
        "fusion": fused,
        "loss": loss,
    }


def test_matched_cells_pairs_exactly_the_shared_cells():
    runs = prepare(
        pd.DataFrame(
            [
                run(1e6, 2, 0.1, 3.00, False),
                run(1e6, 2, 0.2, 2.90, False),
                run(1e6, 2, 0.2, 2.92, False),  # a repeat: averaged
                run(1e6, 2, 0.30004, 2.95, False, configured=False),  # step-rounded fraction
                run(1e6, 2, 0.2, 2.88, True),
                run(1e6, 2, 0.3, 2.96, True),
                run(1e6, 2, 0.5, 2.80, True),  # no classic run at 0.5
                run(2e6, 2, 0.1, 2.70, True),  # nor at this size
                run(1e6, 4, 0.1, 2.60, True),  # nor at this bit width
            ]
        )
    )
    m = matched_cells(runs)
    assert m[["N", "B", "D_total", "frac"]].values.tolist() == [
        [1e6, 2.0, 1e7, 0.2],
        [1e6, 2.0, 1e7, 0.3],
    ]
    assert m.loss_classic.tolist() == pytest.approx([2.91, 2.95])
    assert m.loss_fused.tolist() == pytest.approx([2.88, 2.96])
    assert m["diff"].tolist() == pytest.approx([-0.03, 0.01])


@pytest.mark.parametrize(
    ("diffs", "expected"),
    [
        ([-0.03, -0.01, -0.02], "fused better"),
        ([0.03, 0.01, 0.02], "fused worse"),
        ([-0.02, 0.01, 0.0], "no clear difference"),
    ],
)
def test_verdict_at_two_standard_errors(diffs, expected):
    call, se = verdict(pd.Series(diffs))
    assert call == expected and se == pytest.approx(pd.Series(diffs).std() / math.sqrt(3))


def test_verdict_of_one_cell_is_its_sign():
    assert verdict(pd.Series([-0.1])) == ("fused better", None)
    assert verdict(pd.Series([0.1])) == ("fused worse", None)
    assert verdict(pd.Series([0.0])) == ("equal", None)


def test_no_fusion_effect_saves_no_tokens():
    runs = prepare(pipelines_grid((1e6,), (2.0,), (100.0,), (0.2,), fused=(0.2,), fp_gain=0.0))
    s = fusion_stats(matched_cells(runs), HIDDEN_LAW)
    assert s["cells"] == 1 and s["mean_diff"] == 0.0 and s["fused_wins"] == 0
    assert s["verdict"] == "equal" and s["matches_paper"] is True
    assert s["tokens_saved_pct_mean"] == pytest.approx(0.0, abs=1e-6)


def test_fusion_gain_saves_fewer_tokens_than_it_adds():
    # Fused at gain g equals classic with g more FP tokens; classic at (1 + g)·D has as many FP
    # tokens and more QAT tokens, so it needs fewer than g more tokens: 0 < saved < 100·g %.
    runs = prepare(
        pipelines_grid(SIZES[:2], (2.0, 4.0), (25.0, 400.0), (0.1, 0.3), (0.1, 0.3), fp_gain=0.1)
    )
    u = compare_fusion(runs, HIDDEN_LAW)
    assert u["available"] and u["claim"] == CLAIM and len(u["cells"]) == 16
    for e in (*u["by_bits"].values(), u["overall"]):
        assert e["fused_wins"] == e["cells"] and e["verdict"] == "fused better"
        assert 0 < e["tokens_saved_pct_mean"] < 10


@pytest.mark.parametrize(
    ("gain", "expected", "matches"),
    [(0.05, "fused better", True), (-0.05, "fused worse", False)],
)
def test_fusion_verdict_follows_the_sign_of_the_effect(gain, expected, matches):
    runs = pipelines_grid(
        SIZES,
        BITS,
        TOKENS_PER_PARAM,
        (0.05, 0.1, 0.2, 0.3, 0.45, 0.6),
        (0.1, 0.2, 0.3),
        fp_gain=gain,
        noise=5e-4,
    )
    u = compare_fusion(prepare(runs), HIDDEN_LAW)
    assert u["overall"]["verdict"] == expected and u["overall"]["matches_paper"] is matches
    assert (u["overall"]["tokens_saved_pct_mean"] > 0) is (gain > 0)


def test_fusion_is_unavailable_without_fused_or_matched_runs():
    classic = pipelines_grid((1e6,), (2.0,), (100.0,), (0.2, 0.4))
    assert compare_fusion(prepare(classic), HIDDEN_LAW) == {
        "available": False,
        "why": "no fused QAT runs (fusion=True) in the table",
    }
    apart = pipelines_grid((1e6,), (2.0,), (100.0,), (0.2, 0.4), fused=(0.3,))
    assert not compare_fusion(prepare(apart), HIDDEN_LAW)["available"]
