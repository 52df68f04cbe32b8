"""Ctrl-C: one line saying where training stopped, exit 130, and a rerun that resumes there."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time

from tests.integration.conftest import REPO, VOCAB, runs, train, train_env

CELL = (
    f"data.vocab_size={VOCAB}",
    "data.batch_size=4",
    "data.seq_len=32",
    "data.eval_tokens=1024",
    "tokens=12K",  # 93 steps: a few seconds on a CPU
    "trunk=off",
    "trainer.log_every=1",
    "trainer.ckpt_every_frac=1",  # no periodic checkpoint: the interrupt writes the only one
)


def test_ctrl_c_stops_with_one_line_and_a_rerun_resumes(tmp_path, data_root):
    process = subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), "trainer.progress=false", *CELL],
        cwd=tmp_path,
        env=train_env(tmp_path, data_root),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    while not _logged_steps(tmp_path) and process.poll() is None:  # training has started
        assert time.monotonic() < deadline, "training never started"
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=300)

    assert process.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr
    (line,) = [line for line in stderr.splitlines() if "interrupted" in line]
    match = re.fullmatch(
        rf"interrupted at ([\d,]+) tokens of nano-b4-f0\.3-t12K-s0-bundled-v{VOCAB}-(\w{{6}}); "
        r"rerun to resume",
        line,
    )
    assert match, line
    tokens = int(match.group(1).replace(",", ""))
    (key,) = [p.name for p in (tmp_path / "runs").iterdir() if p.name.startswith(match.group(2))]
    assert 0 < tokens < 12_000
    assert (tmp_path / "runs" / key / "checkpoints" / str(tokens)).is_dir()  # saved at the stop
    (run,) = runs(tmp_path)
    assert run.info.status == "KILLED" and "final/val_loss" not in run.data.metrics

    again = train(tmp_path, data_root, *CELL)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming from {tmp_path / 'runs' / key / 'checkpoints' / str(tokens)}" in again.stdout
    (run,) = runs(tmp_path)  # the same MLflow run, now finished
    assert run.info.status == "FINISHED" and "final/val_loss" in run.data.metrics


def _logged_steps(workdir) -> int:
    return sum(len(path.read_text().splitlines()) for path in workdir.glob("runs/*/metrics.jsonl"))
