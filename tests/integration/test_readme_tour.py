"""The README's tour runs as printed: every command of its table that needs no GPU, cluster or
network is run, word for word, in a scratch checkout, in table order (later rows use what
earlier ones left: the smoke grid's runs, an export).

The table is read from README.md at run time, so a row that changes is tested as it now reads.
Commands that cannot run here are listed in EXCLUDED with the reason; the list must match the
table both ways, so a new row is run (or explicitly excluded), never skipped in silence.

The scratch checkout starts with the smoke grid's MLflow store and run folders (the session's
`smoke_grid`, which tests/integration/test_grid.py checks): its row then finds every cell
FINISHED instead of training the demo a second time.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.conftest import REPO

# Command -> why it is not run here. Keep in step with the README's tour (checked below).
EXCLUDED = {
    ".venv/bin/python train.py -m grid=smoke hydra/launcher=slurm": "needs a SLURM cluster",
    "torchrun --nproc_per_node=4 train.py trainer=deepspeed trainer.zero_stage=2 ...": (
        "needs 4 processes' worth of devices (DeepSpeed on CPU is tested in test_deepspeed.py)"
    ),
    "python -m qat.node_grid grid=mini --gpus 2 --workers-per-gpu 8": "needs 2 GPUs",
    "python -m qat.node_grid grid=repro trainer=packed trainer.compile=true --gpus 1": (
        "needs a GPU"
    ),
    "make mlflow-ui": "starts a server that runs until stopped",
    ".venv/bin/python train.py init.source=hf:<name or folder> init.tokens=2T bits=4 tokens=50M": (
        "a placeholder for the user's pretrained model (from the Hugging Face Hub: network)"
    ),
}
# What marks a command as needing a GPU, a cluster, a server or the network: each one that
# matches must be in EXCLUDED, with its reason.
NEEDS_MORE = re.compile(r"slurm|torchrun|deepspeed|--gpus [1-9]|mlflow-ui|hf:|<")
PROGRAMS = ("python ", ".venv/bin/python ", "make ", "torchrun ")
COPIED = ("conf", "results", "train.py", "Makefile", "pyproject.toml")
LINKED = ("qat", "analysis", "reports", "hydra_plugins")


@dataclass(frozen=True)
class Outcome:
    command: str
    returncode: int
    seconds: float
    stdout: str
    stderr: str


def tour_rows(readme: str) -> list[tuple[str, list[str]]]:
    """(what you want to do, its commands) for each row of the tour table."""
    section = readme.split("## A tour", 1)[1].split("\n#", 1)[0]
    rows = []
    for line in section.splitlines():
        match = re.fullmatch(r"\| (.+?) \| (.+) \|", line.strip())
        if match is None or set(match.group(1)) <= set("- ") or match.group(1) == "you want to":
            continue
        spans = re.findall(r"`([^`]+)`", match.group(2))
        rows.append((match.group(1), [s for s in spans if s.startswith(PROGRAMS)]))
    return rows


def tour_commands() -> list[str]:
    return [c for _, commands in tour_rows((REPO / "README.md").read_text()) for c in commands]


def test_every_tour_row_names_a_command():
    rows = tour_rows((REPO / "README.md").read_text())
    assert len(rows) >= 10
    assert [want for want, commands in rows if not commands] == []


def test_the_exclusions_match_the_tour_both_ways():
    commands = tour_commands()
    assert [c for c in EXCLUDED if c not in commands] == [], "excluded but no longer in the tour"
    unexplained = [c for c in commands if NEEDS_MORE.search(c) and c not in EXCLUDED]
    assert unexplained == [], "add these to EXCLUDED with the reason they cannot run here"


def scratch_checkout(root: Path, smoke_dir: Path) -> Path:
    """A checkout to run the tour in: the repository's configs, results and Makefile copied, its
    packages linked, a .venv that is this interpreter's, and the smoke grid's store."""
    checkout = root / "checkout"
    checkout.mkdir()
    for name in COPIED:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, checkout / name)
        else:
            shutil.copy2(source, checkout / name)
    for name in LINKED:
        (checkout / name).symlink_to(REPO / name)
    # .venv/bin/python, mlflow, ruff, mypy: this interpreter's environment. Its own stamp, newer
    # than the copied Makefile and pyproject.toml, tells `make` that setup is done.
    venv = checkout / ".venv"
    venv.mkdir()
    prefix = Path(sys.prefix)
    for entry in prefix.iterdir():
        if not entry.name.startswith("."):
            (venv / entry.name).symlink_to(entry)
    if not (venv / "bin" / "python").exists():  # not a venv: the interpreter itself
        (venv / "bin").unlink(missing_ok=True)
        (venv / "bin").mkdir()
        (venv / "bin" / "python").symlink_to(sys.executable)
    (venv / ".installed-stamp").touch()
    shutil.copy2(smoke_dir / "mlflow.db", checkout / "mlflow.db")
    shutil.copytree(smoke_dir / "runs", checkout / "runs")
    return checkout


@pytest.fixture(scope="module")
def tour(tmp_path_factory, data_root, smoke_grid) -> list[Outcome]:
    checkout = scratch_checkout(tmp_path_factory.mktemp("tour"), smoke_grid[0])
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "QAT_RUN_DIR")}
    env.update(
        QAT_DATA_DIR=str(data_root),  # the session's prepared corpus: built once for all tests
        PATH=f"{checkout / '.venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}",
        PYTHONUNBUFFERED="1",
    )
    outcomes = []
    for command in tour_commands():
        if command in EXCLUDED:
            continue
        start = time.perf_counter()
        result = subprocess.run(
            command,
            shell=True,
            executable="/bin/bash",
            cwd=checkout,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        outcomes.append(
            Outcome(
                command,
                result.returncode,
                time.perf_counter() - start,
                result.stdout,
                result.stderr,
            )
        )
    print("\n".join(f"{o.seconds:6.1f} s  rc {o.returncode}  {o.command}" for o in outcomes))
    return outcomes


@pytest.mark.slow
def test_every_tour_command_runs_as_printed(tour):
    failed = [
        f"{o.command}\n  exit {o.returncode}: {(o.stderr.strip() or o.stdout.strip())[-600:]}"
        for o in tour
        if o.returncode != 0
    ]
    assert failed == [], "\n".join(failed)


@pytest.mark.slow
def test_the_default_run_learns_below_the_unigram_entropy(tour, data_root):
    """The first row, `train.py` on the defaults: its loss falls from ln(vocab) to below the
    unigram entropy of the validation text (the best a model blind to context can do)."""
    from qat.data import DatasetInfo, unigram_entropy
    from qat.orchestration.grid import expand_grid

    (config,) = expand_grid([], {})  # the defaults, as train.py composes them
    (default,) = [o for o in tour if o.command == ".venv/bin/python train.py"]
    assert default.returncode == 0, default.stderr[-2000:]
    match = re.search(r"final/val_loss=([0-9.]+)", default.stdout)
    assert match is not None, default.stdout[-2000:]
    info = DatasetInfo.load(data_root / f"{config.data.source}-v{config.data.vocab_size}")
    final = float(match.group(1))
    assert final < unigram_entropy(info.val_path) < math.log(info.vocab_size)
