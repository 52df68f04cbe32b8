"""A sweep's trainer=packed cells as packs: one per model shape (qat.engine.packed.members),
split when a pack's members would not fit the device's memory."""

from __future__ import annotations

import json
from collections.abc import Callable

import torch

from qat.cell import RunResult
from qat.config import RunConfig
from qat.engine.backend import resolve_device
from qat.engine.packed.loss import CHUNK_VALUES
from qat.engine.packed.members import pack_shape
from qat.errors import TrainingError

# Of the device memory free at the start, the share a pack may plan to use.
MEMORY_SHARE = 0.7


def member_bytes(config: RunConfig, vocab_size: int) -> int:
    """A rough upper bound of one member's training memory on a GPU: fp32 weights, gradients
    and two moments, plus activations kept for the backward pass. The logits are never whole
    there (qat.engine.packed.loss: one chunk at a time, shared by the pack). Measured on an H100
    for mini-s at 16,384 tokens a step: 0.40 GiB a member; this gives 0.47 GB."""
    model = config.model
    per_layer = 4 * model.dim * model.dim + 3 * model.dim * model.ffn_dim
    weights = model.n_layers * per_layer + 2 * vocab_size * model.dim
    tokens = config.data.batch_size * config.data.seq_len
    activations = tokens * model.n_layers * (30 * model.dim + 8 * model.ffn_dim)
    return 16 * weights + activations


def pack_capacity(config: RunConfig, vocab_size: int) -> int | None:
    """Members one pack may hold: trainer.pack_size, or what the free GPU memory allows
    (None: no limit, on a CPU)."""
    if config.trainer.pack_size > 0:
        return config.trainer.pack_size
    device = resolve_device(config.trainer.device)
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    # the loss's chunk: its logits in bf16 and fp32 temporaries
    usable = MEMORY_SHARE * free - 8 * CHUNK_VALUES
    return max(1, int(usable / member_bytes(config, vocab_size)))


def group_packs(
    cells: list[RunConfig], capacity: Callable[[RunConfig], int | None]
) -> list[list[RunConfig]]:
    """Cells by pack shape (one run key once), each group cut into packs of at most
    ``capacity(first cell)`` members, a lineage's cells (one seed) kept together where they fit."""
    unique = {config.run_key: config for config in cells}
    shapes: dict[str, list[RunConfig]] = {}
    for config in unique.values():
        shapes.setdefault(json.dumps(pack_shape(config), sort_keys=True), []).append(config)
    packs = []
    for group in shapes.values():
        group.sort(key=lambda c: (c.seed, c.optim.lr, c.schedule.warmup_tokens, -c.tokens))
        limit = capacity(group[0])
        if limit is None or len(group) + _lineages(group) <= limit:
            packs.append(group)
            continue
        size = max(1, limit - 1)  # a part's trunk takes a member's place
        parts = [group[start : start + size] for start in range(0, len(group), size)]
        print(
            f"{len(group)} cells of model {group[0].model.name} need more memory than one pack "
            f"of {limit} members: split into {len(parts)} packs (each retrains its FP trunk)",
            flush=True,
        )
        packs.extend(parts)
    return packs


def _lineages(group: list[RunConfig]) -> int:
    return len({(c.seed, c.optim.lr, c.schedule.warmup_tokens) for c in group})


def run_packs(cells: list[RunConfig]) -> dict[str, RunResult | TrainingError]:
    """Train ``cells`` in packs, one after another; each cell's result or error by run key."""
    from qat.cell import load_data
    from qat.pack import run_pack

    outcomes: dict[str, RunResult | TrainingError] = {}
    if not cells:
        return outcomes
    vocab = load_data(cells[0]).vocab_size
    packs = group_packs(cells, lambda config: pack_capacity(config, vocab))
    for index, pack in enumerate(packs):
        print(f"pack {index + 1} of {len(packs)}: {len(pack)} cell(s)", flush=True)
        outcome = run_pack(pack)
        outcomes.update(outcome.results)
        outcomes.update({key: TrainingError(error) for key, error in outcome.failures.items()})
    return outcomes
