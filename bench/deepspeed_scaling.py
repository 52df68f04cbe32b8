"""Tokens/s of the 86M config (seq 2048, bf16 autocast, eager) through the real training loop:
trainer=torch on one GPU (batch 32, and 16: strong scaling's per-GPU batch) against
trainer=deepspeed (ZeRO-2) on one and on two GPUs.

Each variant is a short FP run of train.py (torchrun for two GPUs); tokens/s is the median of
the trainer's own train/tokens_per_s log windows after the first two. Two scalings:
strong (the global batch of 32 sequences split over the GPUs) and weak (32 sequences per GPU).

    python bench/deepspeed_scaling.py --out bench/results/deepspeed_scaling.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from record import write_record

REPO = Path(__file__).resolve().parents[1]
BASE = [
    "model=llama-86m",
    "data=bundled-large",
    "data.seq_len=2048",
    "data.eval_tokens=65536",
    "bits=16",
    "trunk=off",
    "trainer.log_every=5",
    "trainer.ckpt_every_frac=1",
    "trainer.progress=false",
]


def run(name: str, gpus: int, backend: str, batch: int, steps: int, workdir: Path) -> dict:
    out = workdir / name.replace(" ", "_").replace(",", "")  # Hydra override values
    out.mkdir(parents=True)
    overrides = [
        *BASE,
        f"data.batch_size={batch}",
        f"tokens={batch * 2048 * steps}",
        f"trainer={backend}",
        f"tracking.uri=sqlite:///{out}/mlflow.db",
        f"hydra.run.dir={out}/hydra",
    ]
    if backend == "deepspeed":
        overrides.append("trainer.zero_stage=2")
    launcher = [sys.executable]
    if gpus > 1:
        launcher += ["-m", "torch.distributed.run", f"--nproc_per_node={gpus}"]
    env = dict(
        os.environ,
        QAT_RUN_DIR=str(out / "runs"),
        CUDA_VISIBLE_DEVICES=",".join(str(i) for i in range(gpus)),
    )
    started = time.monotonic()
    result = subprocess.run(
        [*launcher, str(REPO / "train.py"), *overrides],
        env=env,
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    if result.returncode:
        sys.exit(f"{name} failed:\n{result.stderr[-3000:]}")
    (metrics,) = out.glob("runs/*/metrics.jsonl")
    speeds = [
        r["train/tokens_per_s"]
        for r in map(json.loads, metrics.read_text().splitlines())
        if "train/tokens_per_s" in r
    ]
    row = {
        "name": name,
        "gpus": gpus,
        "backend": backend,
        "global_batch": batch,
        "tokens_per_s": statistics.median(speeds[2:]),
        "windows": speeds,
        "wall_s": time.monotonic() - started,
    }
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--out", default="bench/results/deepspeed_scaling.json")
    parser.add_argument("--quick", action="store_true", help="torch 1 GPU and ZeRO-2 weak only")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        rows = [run("torch, 1 GPU", 1, "torch", 32, args.steps, workdir)]
        if not args.quick:
            # Strong scaling halves each GPU's batch; this row shows what that alone costs.
            rows.append(run("torch, 1 GPU, half batch", 1, "torch", 16, args.steps, workdir))
            rows.append(run("deepspeed ZeRO-2, 1 GPU", 1, "deepspeed", 32, args.steps, workdir))
            rows.append(
                run("deepspeed ZeRO-2, 2 GPUs, strong", 2, "deepspeed", 32, args.steps, workdir)
            )
        rows.append(run("deepspeed ZeRO-2, 2 GPUs, weak", 2, "deepspeed", 64, args.steps, workdir))
    base = rows[0]["tokens_per_s"]
    result = write_record(args.out, rows=rows)
    print(f"{result['device']}, torch {result['torch']}, 86M, seq 2048, bf16 autocast, eager")
    print("| variant | global batch | tokens/s | vs torch on 1 GPU |\n| --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['name']} | {r['global_batch']} | {r['tokens_per_s']:,.0f} | "
            f"{r['tokens_per_s'] / base:.2f}× |"
        )


if __name__ == "__main__":
    main()
