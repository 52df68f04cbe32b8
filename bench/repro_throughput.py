"""Packed cell-tokens/s of the repro grid's four shapes on one GPU, for its GPU-time estimates
(docs/repro.md). Needs only torch and numpy (no Hydra, no MLflow, no prepared corpus: the tokens
are random, which does not change a step's time), so it runs on a bare GPU machine.

For each shape and member count K: K cells in QAT (bits 1/2/4/6 mixed, as mid-grid), the packed
training step alone, cell-tokens/s = K × 16,384 / the median step time of windows of steps.

    python bench/repro_throughput.py --out bench/results/repro_throughput_h100.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import yaml
from packed_throughput import median_step_seconds, steady_qat_trainer
from record import write_record

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

VOCAB = 4096


def configs(model: str, members: int) -> list:
    from qat.config import RunConfig

    shape = yaml.safe_load((REPO / "conf" / "model" / f"{model}.yaml").read_text())
    made = []
    for index in range(members):
        tree = {
            "bits": (1, 2, 4, 6)[index % 4],
            "qat_frac": 0.05 + 0.85 * index / members,
            "tokens_per_param": 320,
            "fusion": False,
            "seed": 0,
            "model": shape,
            "data": {"source": "random", "vocab_size": VOCAB, "seq_len": 256, "batch_size": 64},
            "optim": {"lr": 3e-3},
            "trainer": {"backend": "packed", "progress": False},
        }
        made.append(RunConfig.from_dict(tree))
    return made


def random_dataset(folder: Path) -> object:
    from qat.data import DatasetInfo, write_shard

    ids = np.random.default_rng(0).integers(0, VOCAB, size=4_000_000)
    write_shard(folder / "train.bin", ids, VOCAB)
    write_shard(folder / "val.bin", ids[:300_000], VOCAB)
    meta = {"vocab_size": VOCAB, "n_train_tokens": ids.size, "n_val_tokens": 300_000}
    (folder / "meta.json").write_text(json.dumps({**meta, "fingerprint": "x", "source": "x"}))
    return DatasetInfo.load(folder)


def step_rate(model: str, members: int, data: object, steps: int) -> dict:
    cells = configs(model, members)
    trainer = steady_qat_trainer(cells, data)
    step_s = median_step_seconds(trainer, steps, warmup=3, windows=3)
    return {
        "model": model,
        "n_params": cells[0].model.non_embedding_params(),
        "members": members,
        "step_ms": round(1000 * step_s, 2),
        "cell_tokens_per_s": round(members * trainer.tokens_per_step / step_s),
        "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--models", nargs="+", default=["mini-xs", "mini-s", "mini-m", "mini-l"])
    parser.add_argument("--members", nargs="+", type=int, default=[16, 33])
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as folder:
        data = random_dataset(Path(folder))
        for model in args.models:
            for members in args.members:
                torch.cuda.empty_cache()
                try:
                    result = step_rate(model, members, data, args.steps)
                except torch.OutOfMemoryError:
                    print(f"{model} K={members}: out of memory", flush=True)
                    break
                print(result, flush=True)
                results.append(result)
    write_record(args.out, step=results)


if __name__ == "__main__":
    main()
