"""The kernel against torch.compile, timed turn by turn: forward+backward of each variant is
captured in a CUDA graph, then the graphs are replayed in alternating order, round after round,
so that clock and thermal drift during the run affect both sides alike (bench/fake_quant.py
times one variant after the other, and at 4096² its run-to-run spread is ~10%).

Back-to-back replays leave part of each pass's tensors in L2 for the next one, which a training
step, with a whole model between a weight's forward and backward, does not. --cold-l2 also
times every variant with an L2-sized buffer written before each forward+backward. --train-like
times them as they run in training: the buffer is written before the forward, and again before
the backward, after which dL/dŵ is written afresh (as the matmul that computes it leaves it in
L2). Both report the time less that of the extra writes alone.

    python bench/fake_quant_interleaved.py --sizes 4096x4096,8192x4096 --cold-l2 --train-like

Prints, per size, each variant's median time, the ratio of medians and how many rounds the
kernel won; writes the JSON to --out.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch
from fake_quant import (
    DEFAULT_SIZES,
    DTYPES,
    capture,
    max_diff,
    parse_sizes,
    positive_int,
    variants,
)
from record import write_record

from qat.quant import format_for_bits, init_scale, reference_fake_quant


def time_replays(graph: torch.cuda.CUDAGraph, replays: int) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / replays


def interleave(graphs: dict[str, torch.cuda.CUDAGraph], args: argparse.Namespace) -> dict:
    """Milliseconds per replay of each graph, one list per graph, timed turn by turn."""
    names = list(graphs)
    for graph in graphs.values():
        time_replays(graph, args.replays)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(args.rounds):
        order = names if round_index % 2 == 0 else names[::-1]
        for name in order:
            times[name].append(time_replays(graphs[name], args.replays))
    return times


def evict(flush: torch.Tensor) -> None:
    flush.fill_(1.0)


def bench_size(rows: int, cols: int, args: argparse.Namespace) -> dict:
    fmt = format_for_bits(args.bits)
    w0 = torch.randn(rows, cols, device="cuda").to(DTYPES[args.dtype])
    scale0 = init_scale(w0, fmt)
    grad = torch.randn_like(w0)
    w, scale = w0.clone().requires_grad_(), scale0.clone().requires_grad_()
    want = torch.autograd.grad(reference_fake_quant(w, scale, fmt), (w, scale), grad)
    graphs, result = {}, {"rows": rows, "cols": cols, "dtype": args.dtype, "bits": args.bits}
    # Twice the L2 of any current GPU, so that writing it evicts everything else.
    evicting = args.cold_l2 or args.train_like
    flush = torch.empty(64 * 2**20 if evicting else 0, device="cuda")
    other = args.against
    for name, fn in variants(fmt, ["cuda", other]).items():

        def fwd_bwd(fn=fn):
            return torch.autograd.grad(fn(w, scale), (w, scale), grad)

        def cold(fwd_bwd=fwd_bwd):
            evict(flush)
            return fwd_bwd()

        def train_like(fn=fn):
            evict(flush)
            out = fn(w, scale)
            # The backward starts as the matmul that computes dL/dŵ finishes: whatever the
            # forward left in L2 is gone, and dL/dŵ has just been written.
            out.register_hook(lambda g: (evict(flush), g * 1.0)[1])
            return torch.autograd.grad(out, (w, scale), grad)

        graphs[name], (grad_w, grad_scale) = capture(fwd_bwd)
        if args.cold_l2:
            graphs[f"{name}_cold"], _ = capture(cold)
        if args.train_like:
            graphs[f"{name}_train"], _ = capture(train_like)
        graphs[name].replay()
        result[f"{name}_grad_w_maxdiff"] = max_diff(grad_w, want[0])
        result[f"{name}_grad_scale_maxrel"] = max_diff(grad_scale, want[1]) / max(
            want[1].abs().max().item(), 1e-30
        )
    if other not in graphs:
        sys.exit("this torch has no exact-division option for torch.compile")
    # What each regime adds to the two passes, timed alone and subtracted.
    overheads = {"": None}
    if args.cold_l2:
        graphs["cold_alone"], _ = capture(lambda: evict(flush))
        overheads["_cold"] = "cold_alone"
    if args.train_like:
        graphs["train_alone"], _ = capture(lambda: (evict(flush), evict(flush), grad * 1.0))
        overheads["_train"] = "train_alone"
    times = interleave(graphs, args)
    nbytes = w0.numel() * w0.element_size()
    result["rounds"] = args.rounds
    for suffix, alone in overheads.items():
        less = statistics.median(times[alone]) if alone else 0.0
        for name in ("cuda", other):
            ms = statistics.median(times[name + suffix]) - less
            result[f"{name}{suffix}_fwdbwd_us"] = ms * 1e3
            result[f"{name}{suffix}_fwdbwd_gbps"] = 5 * nbytes / ms / 1e6
        result[f"cuda_over_{other}{suffix}"] = (
            result[f"{other}{suffix}_fwdbwd_us"] / result[f"cuda{suffix}_fwdbwd_us"]
        )
        pairs = zip(times["cuda" + suffix], times[other + suffix], strict=True)
        result[f"cuda_won_rounds{suffix}"] = sum(c < e for c, e in pairs)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=parse_sizes, default=DEFAULT_SIZES, help="ROWSxCOLS,...")
    parser.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    parser.add_argument("--bits", type=float, default=4)
    parser.add_argument("--rounds", type=positive_int, default=200)
    parser.add_argument(
        "--replays", type=positive_int, default=10, help="graph replays timed per turn"
    )
    parser.add_argument(
        "--cold-l2", action="store_true", help="also time each pass after evicting the L2 cache"
    )
    parser.add_argument(
        "--train-like",
        action="store_true",
        help="also time the passes with the L2 evicted before each and dL/dŵ freshly written",
    )
    parser.add_argument(
        "--against",
        default="compiled_exact",
        choices=["compiled_exact", "compiled"],
        help="torch.compile of the reference with IEEE division, or as compiled by default "
        "(which multiplies by a reciprocal and so does not compute the reference's results)",
    )
    parser.add_argument("--out", default="bench/results/fake_quant_interleaved.json")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("bench/fake_quant_interleaved.py needs a CUDA GPU")
    rows = []
    for r, c in args.sizes:
        rows.append(bench_size(r, c, args))
        print(json.dumps(rows[-1]), flush=True)
    write_record(args.out, rows=rows)
    other = args.against
    print(f"\n| shape | L2 | cuda µs | {other} µs | cuda / {other} | cuda won |")
    print("| --- | --- | --- | --- | --- | --- |")
    for row in rows:
        for suffix, l2 in [("", "warm"), ("_cold", "cold"), ("_train", "training-like")]:
            if f"cuda{suffix}_fwdbwd_us" in row:
                print(
                    f"| {row['rows']}×{row['cols']} | {l2} | "
                    f"{row[f'cuda{suffix}_fwdbwd_us']:.2f} | "
                    f"{row[f'{other}{suffix}_fwdbwd_us']:.2f} | "
                    f"{row[f'cuda_over_{other}{suffix}']:.3f} | "
                    f"{row[f'cuda_won_rounds{suffix}']}/{row['rounds']} |"
                )


if __name__ == "__main__":
    main()
