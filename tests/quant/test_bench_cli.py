"""The fake-quant bench scripts refuse bad arguments with one usage line, before any GPU work."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = ["bench/fake_quant.py", "bench/fake_quant_interleaved.py"]


def run(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, script, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": "", "PATH": "/usr/bin:/bin"},
        timeout=120,
    )


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize(
    "args, complaint",
    [
        (["--sizes", "4096"], "--sizes"),
        (["--sizes", "4096x0"], "--sizes"),
        (["--sizes", "axb"], "--sizes"),
    ],
)
def test_bad_sizes_are_one_usage_line(script, args, complaint):
    done = run(script, *args)
    assert done.returncode == 2
    error_lines = [line for line in done.stderr.splitlines() if "error:" in line]
    assert len(error_lines) == 1 and complaint in error_lines[0]
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    "script, flag", [(SCRIPTS[0], "--repeats"), (SCRIPTS[0], "--warmup"), (SCRIPTS[1], "--rounds")]
)
def test_counts_below_one_are_refused(script, flag):
    done = run(script, flag, "0")
    assert done.returncode == 2 and flag in done.stderr and "Traceback" not in done.stderr


def test_unknown_dtype_is_refused():
    done = run(SCRIPTS[0], "--dtypes", "bf16,fp8")
    assert done.returncode == 2 and "fp8" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("script", SCRIPTS)
def test_good_arguments_get_past_parsing_to_the_gpu_check(script):
    done = run(script, "--sizes", "8x16,32x64")
    assert done.returncode == 1 and "needs a CUDA GPU" in done.stderr


def test_an_unknown_format_is_one_usage_line():
    done = run(SCRIPTS[0], "--bits", "4,fp5_e2m2")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    error_lines = [line for line in done.stderr.splitlines() if "error:" in line]
    assert len(error_lines) == 1 and "--bits" in error_lines[0] and "fp5_e2m2" in error_lines[0]


def test_float_formats_and_bit_widths_get_past_parsing_to_the_gpu_check():
    done = run(SCRIPTS[0], "--bits", "4,1.58,fp8_e4m3,mxfp4,nvfp4")
    assert done.returncode == 1 and "needs a CUDA GPU" in done.stderr
