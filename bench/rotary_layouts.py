"""The packed step's rotary embedding, forward + backward, in a few formulations, on one GPU.

The packed step rotates q and k of every member in the q|k|v matmul's layout with
qat.model.apply_rotary compiled (member count dynamic). On an H100 at 64 mini-s members that
kernel pair took 22 ms of a 153 ms step (bench/results/packed_step_fused_h100.json), moving
~1 GB each way: several times the time HBM needs. This bench times, on the same tensors:

- ``stack``: qat.model.apply_rotary as the packed step calls it (pairs unbound, rotated, stacked);
- ``swap``: x·cos + swap(x)·sin with the tables expanded to head_dim outside the compiled
  function (no stack; the same fp32 products and sums per element);
- ``contiguous``: ``stack`` on a contiguous copy of q|k (is the strided read the cost?).

and checks each against ``stack``'s values (max |difference|).

    python bench/rotary_layouts.py --members 64 --out bench/results/rotary_layouts.json
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from record import write_record

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from qat.model import apply_rotary, rotary_tables  # noqa: E402


def apply_rotary_swap(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x·cos + swap(x)·sin, where swap exchanges each channel pair and ``sin`` carries the
    pair's sign (−sin on the first channel, +sin on the second)."""
    xf = x.float()
    swapped = xf.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)
    return (xf * cos + swapped * sin).type_as(x)


def expanded_tables(tables: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[seq, 1, head_dim/2, 2] cos/sin pairs → cos and signed sin, each [seq, 1, head_dim]."""
    cos, sin = tables[..., 0], tables[..., 1]
    cos_full = torch.stack((cos, cos), dim=-1).flatten(-2)
    sin_signed = torch.stack((-sin, sin), dim=-1).flatten(-2)
    return cos_full.contiguous(), sin_signed.contiguous()


def time_ms(fn: Callable[[], torch.Tensor], grad: torch.Tensor, inputs: torch.Tensor) -> float:
    for _ in range(3):
        torch.autograd.grad(fn(), inputs, grad)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    repeats = 10
    for _ in range(repeats):
        torch.autograd.grad(fn(), inputs, grad)
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, default=64)
    parser.add_argument("--dim", type=int, default=128, help="mini-s: 128")
    parser.add_argument("--heads", type=int, default=4, help="mini-s: 4")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    device = torch.device("cuda")
    head_dim = args.dim // args.heads
    rotated = 2 * args.heads  # q and k heads (no grouped-query attention in the mini shapes)
    tokens = args.batch * args.seq
    joint = torch.randn(
        args.members, tokens, 3 * args.dim, device=device, dtype=torch.bfloat16, requires_grad=True
    )
    tables = rotary_tables(head_dim, args.seq, 10000.0, device).unsqueeze(1)
    cos, sin = expanded_tables(tables)
    rows = args.members * args.batch

    def qk() -> torch.Tensor:
        return joint[..., : rotated * head_dim].reshape(rows, args.seq, rotated, head_dim)

    stack = torch.compile(apply_rotary, dynamic=True)
    swap = torch.compile(apply_rotary_swap, dynamic=True)
    variants: dict[str, Callable[[], torch.Tensor]] = {
        "stack": lambda: stack(qk(), tables),
        "swap": lambda: swap(qk(), cos, sin),
        "contiguous": lambda: stack(qk().contiguous(), tables),
    }
    reference = variants["stack"]().detach()
    grad = torch.randn_like(reference)
    gigabytes = 2 * reference.numel() * reference.element_size() / 1e9  # read + write, forward
    results = []
    for name, fn in variants.items():
        ms = time_ms(fn, grad, joint)
        difference = (fn().detach().float() - reference.float()).abs().max().item()
        results.append(
            {"variant": name, "fwd_bwd_ms": round(ms, 3), "max_abs_diff_vs_stack": difference}
        )
        print(results[-1], flush=True)
    write_record(
        args.out,
        members=args.members,
        shape=[rows, args.seq, rotated, head_dim],
        forward_gb_each_way=round(gigabytes / 2, 3),
        results=results,
    )


if __name__ == "__main__":
    main()
