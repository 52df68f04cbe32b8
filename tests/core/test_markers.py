"""The `gpu` marker's rule (tests/conftest.py): without CUDA such tests are deselected, not
skipped, so a CPU run reports no GPU skips; with CUDA they run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

CONFTEST = """
import os

import torch

if os.environ.get("FAKE_CUDA") == "1":
    torch.cuda.is_available = lambda: True

from tests.conftest import pytest_collection_modifyitems  # the rule under test
"""

TESTS = """
import pytest


@pytest.mark.gpu
def test_on_the_gpu():
    pass


def test_anywhere():
    pass
"""


def run_pytest(tmp_path: Path, fake_cuda: bool) -> str:
    (tmp_path / "pytest.ini").write_text("[pytest]\naddopts = --strict-markers\nmarkers =\n  gpu\n")
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_sample.py").write_text(TESTS)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "CUDA_VISIBLE_DEVICES": "",  # no GPU, even on a machine that has one
        "FAKE_CUDA": "1" if fake_cuda else "0",
    }
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-rA", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.strip().splitlines()[-1]


def test_gpu_tests_are_deselected_without_cuda(tmp_path):
    summary = run_pytest(tmp_path, fake_cuda=False)
    assert "1 passed" in summary and "1 deselected" in summary, summary
    assert "skipped" not in summary, summary


def test_gpu_tests_run_with_cuda(tmp_path):
    summary = run_pytest(tmp_path, fake_cuda=True)
    assert "2 passed" in summary and "deselected" not in summary, summary
