"""The walking skeleton end to end: Hydra multirun → training → MLflow, on the bundled corpus."""

from __future__ import annotations

import pytest

from tests.integration.conftest import VOCAB, runs, train

SMALL = (f"data.vocab_size={VOCAB}", "data.batch_size=8", "data.eval_tokens=16384")


@pytest.fixture(scope="module")
def smoke(smoke_grid):
    return smoke_grid


def test_smoke_grid_finishes_every_cell(smoke):
    workdir, _ = smoke
    finished = [r for r in runs(workdir) if r.info.status == "FINISHED"]
    # 4 bit widths x 2 fractions, but the two FP-only cells share one run key.
    assert len(finished) == 7
    for run in finished:
        assert "final/val_loss" in run.data.metrics
        assert "fp/val_loss" in run.data.metrics
        params = run.data.params
        assert int(params["tokens_fp"]) + int(params["tokens_qat"]) == int(params["tokens_total"])
        assert int(params["n_params"]) < int(params["n_params_total"])
        assert params["run_key"] == run.data.tags["run_key"]
        assert (workdir / "runs" / params["run_key"] / "metrics.jsonl").exists()


def test_smoke_grid_learns_well_below_the_unigram_baseline(smoke, val_entropy):
    workdir, _ = smoke
    for run in runs(workdir):
        assert run.data.metrics["final/val_loss"] < val_entropy - 0.75, run.info.run_name


def test_8bit_qat_is_within_2_percent_of_fp(smoke):
    workdir, _ = smoke
    by_bits: dict[float, list[float]] = {}
    for run in runs(workdir):
        by_bits.setdefault(float(run.data.params["bits"]), []).append(
            run.data.metrics["final/val_loss"]
        )
    (fp,) = by_bits[16.0]
    for loss in by_bits[8.0]:
        assert abs(loss - fp) / fp < 0.02


def test_rerunning_the_grid_trains_nothing(smoke, data_root):
    workdir, _ = smoke
    before = {r.info.run_id for r in runs(workdir)}
    again = train(workdir, data_root, "-m", "grid=smoke")
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("already FINISHED") == 8
    assert {r.info.run_id for r in runs(workdir)} == before


def test_report_prints_the_loss_table(smoke):
    import subprocess
    import sys

    from tests.integration.conftest import REPO

    workdir, _ = smoke
    out = subprocess.run(
        [sys.executable, "-m", "qat.report", "--tracking-uri", f"sqlite:///{workdir}/mlflow.db"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "7 finished run(s)" in out and "final_val_loss" in out


def test_grid_command_as_written_in_the_readme(tmp_path, data_root):
    result = train(
        tmp_path,
        data_root,
        "-m",
        "bits=2,4",
        "qat_frac=0.2,0.5",
        "model=nano",
        "tokens=60K",
        *SMALL,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    finished = [r for r in runs(tmp_path) if r.info.status == "FINISHED"]
    assert sorted((r.data.params["bits"], r.data.params["qat_frac"]) for r in finished) == [
        ("2.0", "0.2"),
        ("2.0", "0.5"),
        ("4.0", "0.2"),
        ("4.0", "0.5"),
    ]
    for run in finished:
        tokens_qat = int(run.data.params["tokens_qat"])
        share = tokens_qat / int(run.data.params["tokens_total"])
        assert abs(share - float(run.data.params["qat_frac"])) < 0.05


def test_fit_law_runs_on_the_smoke_grid_store(smoke, tmp_path):
    """`make fit-law` on the demo's store: the trainer's MLflow schema is what analysis reads."""
    import json
    import subprocess
    import sys

    from tests.integration.conftest import REPO

    workdir, _ = smoke
    out = tmp_path / "law"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "analysis.fit_law",
            "--experiment",
            "qat",
            "--starts",
            "40",
            "--tracking-uri",
            f"sqlite:///{workdir}/mlflow.db",
            "--out",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    law = json.loads((out / "law.json").read_text())
    assert law["law"] == "qat" and law["n_points"] == 6  # the FP-only cell is not a QAT point
