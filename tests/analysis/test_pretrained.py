"""The pretrained user's plan (analysis.pretrained): the loss after D_qat QAT tokens, the D_qat to
come within x% of the FP loss, and where more QAT stops paying; on the synthetic true law."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from analysis.errors import AnalysisError
from analysis.law import CHINCHILLA, QAT, FittedLaw
from analysis.pretrained import plan_pretrained
from analysis.synthetic import CHINCHILLA_PARAMS, TRUE_QAT_PARAMS
from tests.analysis.helpers import run_module

TRUE = FittedLaw(QAT, dict(TRUE_QAT_PARAMS), 1.0, {}, 0, {})
N, D_FP = 3e8, 6e9


def test_within_x_percent_is_where_the_curve_meets_the_fp_loss():
    plan = plan_pretrained(TRUE, N, D_FP, 4)
    for pct, tokens in plan.within.items():
        assert math.isfinite(tokens)
        loss = TRUE.loss(N, D_FP, tokens, 4)
        assert loss == pytest.approx(plan.fp_loss * (1 + pct / 100), rel=1e-6)
    # A tighter target needs more QAT tokens.
    ordered = [plan.within[p] for p in sorted(plan.within, reverse=True)]
    assert ordered == sorted(ordered)


def test_fewer_bits_need_more_qat():
    plans = {b: plan_pretrained(TRUE, N, D_FP, b) for b in (2, 4, 8)}
    assert plans[2].within[5.0] > plans[4].within[5.0] > plans[8].within[5.0]
    assert plans[2].stops_paying > plans[4].stops_paying > plans[8].stops_paying


def test_the_curve_is_the_laws_loss_and_more_qat_pays_less_and_less():
    plan = plan_pretrained(TRUE, N, D_FP, 4)
    curve = plan.curve
    np.testing.assert_allclose(curve.loss, TRUE.loss(N, D_FP, curve.D_qat, 4))
    assert (np.diff(curve.loss) < 0).all()  # the true law: QAT tokens always help here
    stop = plan.stops_paying
    assert curve.D_qat.min() < stop < curve.D_qat.max()


def test_bad_input_is_refused():
    with pytest.raises(AnalysisError, match="no QAT terms"):
        plan_pretrained(FittedLaw(CHINCHILLA, dict(CHINCHILLA_PARAMS), 1.0, {}, 0, {}), N, D_FP, 4)
    with pytest.raises(AnalysisError, match="bits=16"):
        plan_pretrained(TRUE, N, D_FP, 16)
    with pytest.raises(AnalysisError, match="pretrained_tokens"):
        plan_pretrained(TRUE, N, -1.0, 4)


def test_the_cli_answers_in_text_and_json(tmp_path):
    law = TRUE.save(tmp_path / "law.json")
    args = ("--law", str(law), "--n", str(N), "--pretrained-tokens", str(D_FP), "--bits", "4")
    text = run_module("analysis.predict", *args, cwd=tmp_path)
    assert text.returncode == 0, text.stderr
    assert "within 5% of the FP loss: D_qat = " in text.stdout
    assert "more QAT stops paying" in text.stdout
    answer = json.loads(run_module("analysis.predict", *args, "--json", cwd=tmp_path).stdout)
    assert answer["within_pct"]["5"] == pytest.approx(plan_pretrained(TRUE, N, D_FP, 4).within[5])
    both = run_module("analysis.predict", *args, "--tokens", "1e9", cwd=tmp_path)
    assert both.returncode != 0 and "not allowed with" in both.stderr
