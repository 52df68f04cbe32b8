"""CPU training throughput of model shapes relative to each other, robust to a busy machine.

    python bench/cpu_shapes.py --out bench/results/cpu_shapes.json

Each shape (Hydra overrides, as for train.py) trains ``--steps`` AdamW steps on random tokens in
one thread, timed in CPU seconds of this process (``time.process_time``): other processes on
the machine then slow the wall clock but hardly the count. The shapes run back to back,
``--repeats`` times; the ratios between them scale a wall-clock rate measured on an idle
machine (qat/throughput.yaml) to the shapes that were not.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from record import write_record

from qat.model import Transformer
from qat.orchestration.grid import expand_grid

SHAPES = {
    "nano-v8192-b32": ["model=nano", "data.vocab_size=8192", "data.batch_size=32"],
    "nano-v2048-b16": ["model=nano", "data.vocab_size=2048", "data.batch_size=16"],
}


def tokens_per_cpu_second(overrides: list[str], steps: int) -> float:
    (config,) = expand_grid(overrides, {})
    torch.manual_seed(0)
    model = Transformer(config.model, config.data.vocab_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch, seq = config.data.batch_size, config.data.seq_len
    ids = torch.randint(0, config.data.vocab_size, (batch, seq + 1))

    def step() -> None:
        logits = model(ids[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), ids[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    for _ in range(3):  # warm-up
        step()
    start = time.process_time()
    for _ in range(steps):
        step()
    return batch * seq * steps / (time.process_time() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="bench/results/cpu_shapes.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rates: dict[str, list[float]] = {name: [] for name in SHAPES}
    for _ in range(args.repeats):
        for name, overrides in SHAPES.items():
            rates[name].append(tokens_per_cpu_second(overrides, args.steps))
    first = next(iter(SHAPES))
    medians = {name: statistics.median(values) for name, values in rates.items()}
    for name, median in medians.items():
        print(f"{name}: {median:,.0f} tokens per CPU second ({median / medians[first]:.2f}x)")
    write_record(args.out, steps=args.steps, tokens_per_cpu_s=rates, medians=medians)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
