"""The report commands' shared CLI: options parsed into `run`'s keywords, an AnalysisError as one
line and exit 2, summary.json and summary.md written together."""

from __future__ import annotations

import json

from analysis.errors import AnalysisError
from analysis.report_cli import (
    add_law_fit_options,
    law_fit_kwargs,
    report_main,
    report_parser,
    write_summary,
)


def test_the_law_fit_options_become_run_keywords(tmp_path):
    ap = report_parser("prog", "a report")
    add_law_fit_options(ap, bootstrap=7, bootstrap_help="resamples")
    seen = {}
    argv = ["--runs", "r.csv", "--out", str(tmp_path), "--starts", "3", "--workers", "2"]
    assert report_main(ap, argv, lambda a: seen.update(law_fit_kwargs(a))) == 0
    assert seen == {"starts": 3, "fp_starts": None, "bootstrap": 7, "seed": 0, "workers": 2}


def test_an_analysis_error_is_one_line_and_exit_2(tmp_path, capsys):
    def fail(args):
        raise AnalysisError("runs file 'r.csv' has no QAT runs")

    ap = report_parser("prog", "a report")
    assert report_main(ap, ["--runs", "r.csv", "--out", str(tmp_path)], fail) == 2
    assert capsys.readouterr().err == "error: runs file 'r.csv' has no QAT runs\n"


def test_the_summary_is_written_for_code_and_for_people(tmp_path):
    summary = {"cells": 3, "name": "f* ≈ 0.5"}
    write_summary(tmp_path, summary, lambda s: f"# {s['name']}\n")
    assert json.loads((tmp_path / "summary.json").read_text("utf-8")) == summary
    assert "≈" in (tmp_path / "summary.json").read_text("utf-8")  # not escaped
    assert (tmp_path / "summary.md").read_text("utf-8") == "# f* ≈ 0.5\n"
