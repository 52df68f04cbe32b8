"""What a newcomer can discover: train.py --help and make help."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from omegaconf import OmegaConf

from qat.config import ALLOWED_BITS
from qat.orchestration.overrides import config_groups

REPO = Path(__file__).resolve().parents[2]


def test_train_help_lists_keys_values_groups_and_launchers():
    result = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    text = result.stdout
    primary = OmegaConf.load(REPO / "conf" / "config.yaml")
    for key in primary:
        if key not in ("defaults", "hydra"):
            assert re.search(rf"^\s+{key}[.\s]", text, re.MULTILINE), f"top-level key {key}"
    (bits_line,) = re.findall(r"^\s+bits\s.*$", text, re.MULTILINE)
    for bits in ALLOWED_BITS:
        assert re.search(rf"(?<![\d.]){re.escape(f'{bits:g}')}(?![\d.])", bits_line), bits
    for group, options in config_groups().items():
        assert f"{group}: {', '.join(options)}" in text  # every group with every option
    for launcher in (
        "python train.py -m grid=",  # this machine, cell by cell
        "python -m qat.node_grid",
        "hydra/launcher=slurm",
        "torchrun --nproc_per_node=N train.py trainer=deepspeed",
    ):
        assert launcher in text, launcher
    assert "_self_" not in text and "defaults:" not in text  # not Hydra's raw config dump


def test_make_help_lists_every_target():
    makefile = (REPO / "Makefile").read_text()
    phony = {
        t for line in re.findall(r"^\.PHONY:(.*)$", makefile, re.MULTILINE) for t in line.split()
    }
    result = subprocess.run(["make", "-s", "help"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    listed = {line.split()[0] for line in result.stdout.splitlines() if line.startswith("  ")}
    assert {"predict", "collect", "fit-law", "status", "plan", "report"} <= listed
    assert phony <= listed, f"targets missing from make help: {sorted(phony - listed)}"
