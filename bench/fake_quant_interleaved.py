"""The kernel against torch.compile, timed turn by turn: forward+backward of each variant is
captured in a CUDA graph, then the graphs are replayed in alternating order, round after round,
so that clock and thermal drift during the run affect both sides alike (bench/fake_quant.py
times one variant after the other, and at 4096² its run-to-run spread is ~10%).

    python bench/fake_quant_interleaved.py --sizes 4096x4096,8192x4096

Prints, per size, each variant's median time, the ratio of medians and how many rounds the
kernel won; writes the JSON to --out.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch
from fake_quant import DTYPES, capture, max_diff, variants
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


def bench_size(rows: int, cols: int, args: argparse.Namespace) -> dict:
    fmt = format_for_bits(args.bits)
    w0 = torch.randn(rows, cols, device="cuda").to(DTYPES[args.dtype])
    scale0 = init_scale(w0, fmt)
    grad = torch.randn_like(w0)
    w, scale = w0.clone().requires_grad_(), scale0.clone().requires_grad_()
    want = torch.autograd.grad(reference_fake_quant(w, scale, fmt), (w, scale), grad)
    graphs, result = {}, {"rows": rows, "cols": cols, "dtype": args.dtype, "bits": args.bits}
    for name, fn in variants(fmt, ["cuda", "compiled_exact"]).items():
        graphs[name], (grad_w, grad_scale) = capture(
            lambda fn=fn: torch.autograd.grad(fn(w, scale), (w, scale), grad)
        )
        graphs[name].replay()
        result[f"{name}_grad_w_maxdiff"] = max_diff(grad_w, want[0])
        result[f"{name}_grad_scale_maxrel"] = max_diff(grad_scale, want[1]) / max(
            want[1].abs().max().item(), 1e-30
        )
    if len(graphs) < 2:
        sys.exit("this torch has no exact-division option for torch.compile")
    names = list(graphs)
    for graph in graphs.values():
        time_replays(graph, args.replays)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(args.rounds):
        order = names if round_index % 2 == 0 else names[::-1]
        for name in order:
            times[name].append(time_replays(graphs[name], args.replays))
    nbytes = w0.numel() * w0.element_size()
    for name in names:
        ms = statistics.median(times[name])
        result[f"{name}_fwdbwd_us"] = ms * 1e3
        result[f"{name}_fwdbwd_gbps"] = 5 * nbytes / ms / 1e6
    result["cuda_over_compiled_exact"] = (
        result["compiled_exact_fwdbwd_us"] / result["cuda_fwdbwd_us"]
    )
    wins = sum(c < e for c, e in zip(times["cuda"], times["compiled_exact"], strict=True))
    result["rounds"], result["cuda_won_rounds"] = args.rounds, wins
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="4096x4096,8192x4096,16384x4096,32768x8192")
    parser.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    parser.add_argument("--bits", type=float, default=4)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--replays", type=int, default=10, help="graph replays timed per turn")
    parser.add_argument("--out", default="bench/results/fake_quant_interleaved.json")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("bench/fake_quant_interleaved.py needs a CUDA GPU")
    rows = []
    for size in args.sizes.split(","):
        r, c = (int(x) for x in size.split("x"))
        rows.append(bench_size(r, c, args))
        print(json.dumps(rows[-1]), flush=True)
    write_record(args.out, rows=rows)
    print("\n| shape | cuda µs | compiled_exact µs | cuda / compiled_exact | cuda won |")
    print("| --- | --- | --- | --- | --- |")
    for row in rows:
        print(
            f"| {row['rows']}×{row['cols']} | {row['cuda_fwdbwd_us']:.1f} | "
            f"{row['compiled_exact_fwdbwd_us']:.1f} | {row['cuda_over_compiled_exact']:.3f} | "
            f"{row['cuda_won_rounds']}/{row['rounds']} |"
        )


if __name__ == "__main__":
    main()
