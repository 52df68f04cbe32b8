"""Bad input: one clear line, a non-zero exit, and nothing left RUNNING or marked FINISHED."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time

import pytest

from tests.integration.conftest import VOCAB, error_lines, runs, train, train_env

SMALL = (f"data.vocab_size={VOCAB}", "data.batch_size=4", "data.seq_len=32", "tokens=2K")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("bits=5", "bits=5 is not supported; allowed: 1, 1.58, 2, 3, 4, 6, 8, 16"),
        ("qat_frac=1.2", "qat_frac=1.2 must be in [0, 1)"),
        ("tokens=-1", "tokens=-1 must be a positive number of tokens"),
        ("optim.lr=-3", "optim.lr=-3.0 > 0"),
        ("data.train_fraction=0", "data.train_fraction=0.0 in (0, 1]"),
    ],
)
def test_config_out_of_range(tmp_path, data_root, override, message):
    result = train(tmp_path, data_root, override)
    assert result.returncode == 2
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and message in lines[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert left_behind(tmp_path) == []  # no outputs/ folder for a run that never started
    assert runs(tmp_path) == []  # validation happens before any MLflow run exists


def test_unknown_key_names_the_likely_one(tmp_path):
    result = train(tmp_path, tmp_path / "no-data", "bit=4")
    assert result.returncode == 2
    assert result.stderr.strip() == "error: unknown key 'bit'; did you mean 'bits'?"
    assert left_behind(tmp_path) == []


def test_unknown_model_is_one_line_with_the_options(tmp_path):
    result = train(tmp_path, tmp_path / "no-data", "model=nope")
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: model=nope is not a model config; available: ")
    assert all(option in line for option in ("nano", "tiny", "mini-xs", "llama-1b"))
    assert left_behind(tmp_path) == []


def test_cfg_job_validates(tmp_path):
    """--cfg job refuses what a run would refuse, with the same line; a valid one prints."""
    bad = train(tmp_path, tmp_path / "no-data", "--cfg=job", "bits=5")
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.strip() == (
        "error: bits=5 is not supported; allowed: 1, 1.58, 2, 3, 4, 6, 8, 16 (16 = FP only)"
    )
    good = train(tmp_path, tmp_path / "no-data", "--cfg=job", "bits=2")
    assert good.returncode == 0 and "bits: 2" in good.stdout


@pytest.mark.parametrize(
    ("command", "code", "message"),
    [
        (("qat.plan", "grid=smoke", "bit=4"), 2, "unknown key 'bit'; did you mean 'bits'?"),
        (("qat.node_grid", "grid=smoke", "model=nope", "--gpus=0"), 2, "model=nope is not a model"),
        (("qat.export", "grid=smoke", "bits=5", "--out", "x"), 2, "bits=5 is not supported"),
        (("qat.status", "grid=smoke", "tracking.uri=http://127.0.0.1:{port}"), 1, "not reachable"),
        (
            (
                "analysis.collect",
                "--experiment=x",
                "--out=x.csv",
                "--tracking-uri=http://127.0.0.1:{port}",
            ),
            1,
            "not reachable",  # MLflow retried for minutes, then a traceback
        ),
    ],
)
def test_grid_commands_share_the_error_style(tmp_path, command, code, message):
    """plan, node_grid, status, export and collect report like train.py: one line, 2 for
    config, 1 at run time."""
    argv = [word.format(port=unused_port()) for word in command]
    result = subprocess.run(
        [sys.executable, "-m", *argv],
        cwd=tmp_path,
        env=train_env(tmp_path, tmp_path / "no-data"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == code, result.stderr[-2000:]
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and message in line


def test_nan_loss_fails_the_run_without_finishing_it(tmp_path, data_root):
    result = train(
        tmp_path, data_root, *SMALL, "optim.lr=1e30", "optim.grad_clip=0", "trainer.log_every=1"
    )
    assert result.returncode == 1
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and "loss is nan" in lines[0].lower(), result.stderr[-2000:]
    (run,) = runs(tmp_path)
    assert run.info.status == "FAILED"
    assert "final/val_loss" not in run.data.metrics


def test_dead_tracking_server_fails_in_seconds(tmp_path):
    """Checked before the data or MLflow: one short line, no retry warnings, nothing written."""
    uri = f"http://127.0.0.1:{unused_port()}"
    start = time.monotonic()
    result = train(tmp_path, tmp_path / "no-data", f"tracking.uri={uri}")
    elapsed = time.monotonic() - start
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: MLflow tracking server {uri} is not reachable (connection refused); start it "
        "(slurm/mlflow_server.sh) or set tracking.uri / $MLFLOW_TRACKING_URI"
    ]
    assert elapsed < 8, elapsed  # Python and Hydra start included; MLflow retried for ~5 s
    assert left_behind(tmp_path) == []


def test_missing_data_source_is_a_config_error_before_any_work(tmp_path):
    missing = tmp_path / "my-corpus"
    result = train(tmp_path, tmp_path / "no-data", f"data.source={missing}")
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: data.source: source '{missing}' is not ")
    assert left_behind(tmp_path) == []  # no mlflow.db, no outputs/, no runs/


def test_corrupt_shard_says_how_to_rebuild_it(tmp_path, data_root):
    corrupt = tmp_path / "corrupt-data"
    shutil.copytree(data_root / f"bundled-v{VOCAB}", corrupt)
    train_bin = corrupt / "train.bin"
    train_bin.write_bytes(train_bin.read_bytes()[:1000])  # truncated
    workdir = tmp_path / "work"
    result = train(workdir, data_root, *SMALL, f"data.cache_dir={corrupt}")
    assert result.returncode == 1
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and "train.bin is truncated" in lines[0], result.stderr[-2000:]
    assert lines[0].endswith(
        f"; rebuild it: rm -rf {corrupt} && python -m qat.data.prepare --source bundled "
        f"--vocab-size {VOCAB} --out {corrupt}"
    )
    assert left_behind(workdir) == []  # no empty runs/<key>/claim.lock, no outputs/


def unused_port() -> int:
    """A localhost port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def left_behind(workdir) -> list[str]:
    """What a command created in its working directory (its MLflow store, run folders,
    Hydra's outputs/), every file and folder."""
    return sorted(str(p.relative_to(workdir)) for p in workdir.rglob("*"))
