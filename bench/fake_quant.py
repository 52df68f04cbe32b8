"""Fake-quant throughput: the CUDA kernel against a device-to-device copy and the reference.

GB/s counts the bytes each pass must move: forward reads w and writes ŵ; forward+backward
also reads w and dL/dŵ and writes dL/dw (scales are negligible). NVFP4's per-tensor scale costs
the kernel one more read of w per pass, which is not counted: it shows as a lower GB/s. Every
variant is captured in a CUDA graph and timed by replays with CUDA events (median of repeats
after warmup), so Python and launch overhead stay out of the numbers and all variants are timed
alike. ``--bits`` takes integer bit widths and float format names (mxfp4, nvfp4, ...).

    python bench/fake_quant.py --out bench/results/fake_quant.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable
from typing import Any

import torch
from record import write_record
from torch import Tensor

from qat.quant import (
    FLOAT_FORMATS,
    QuantConfigError,
    QuantFormat,
    fake_quant,
    format_for_bits,
    init_scale,
    reference_fake_quant,
)

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
DEFAULT_SIZES = "4096x4096,8192x4096,16384x4096,32768x8192"


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """ "ROWSxCOLS,..." as (rows, cols) pairs; an argparse type, so a bad value is a usage error."""
    try:
        sizes = [tuple(int(x) for x in item.split("x")) for item in text.split(",")]
    except ValueError:
        sizes = []
    if not sizes or any(len(size) != 2 or min(size) < 1 for size in sizes):
        raise argparse.ArgumentTypeError(f"expected ROWSxCOLS[,ROWSxCOLS...], got {text!r}")
    return sizes  # type: ignore[return-value]  # each checked to hold two ints


def parse_formats(text: str) -> list[QuantFormat]:
    """ "4,1.58,mxfp4,...": integer bit widths and float format names, as formats (argparse)."""
    formats = []
    for item in text.split(","):
        try:
            formats.append(FLOAT_FORMATS.get(item) or format_for_bits(item))
        except QuantConfigError:
            allowed = ", ".join(FLOAT_FORMATS)
            raise argparse.ArgumentTypeError(
                f"{item!r} is neither a bit width (1, 1.58, 2, 3, 4, 6, 8) nor one of {allowed}"
            ) from None
    return formats


def positive_int(text: str) -> int:
    """An int >= 1, as an argparse type."""
    value = int(text) if text.strip().lstrip("-").isdigit() else 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def capture(fn: Callable[[], Any]) -> tuple[torch.cuda.CUDAGraph, Any]:
    """fn() as a CUDA graph, and the tensors its replays write."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm up (and compile) off the capture, as torch advises
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        output = fn()
    return graph, output


def time_graph(fn: Callable[[], Any], warmup: int, repeats: int) -> tuple[float, Any]:
    """(median milliseconds of one fn() replayed from a CUDA graph, the replays' output)."""
    graph, output = capture(fn)
    for _ in range(warmup):
        graph.replay()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times), output


def max_diff(got: Tensor, want: Tensor) -> float:
    return (got.float() - want.float()).abs().max().item()


def exact_division_options() -> dict[str, bool]:
    """Inductor's option for IEEE-rounded fp32 division, as eager computes it: by default
    Triton's `/` is div.full.f32 (up to 2 ulp off), which moves w/α across rounding ties. The
    option's name changed between torch releases; {} when this torch has none."""
    from torch._inductor import config

    known = config.get_config_copy()
    for name in (
        "eager_numerics.division_rounding",
        "emulate_division_rounding",
        "emulate_divison_rounding",  # sic: the name in earlier releases (torch 2.11 has the first)
    ):
        if name in known:
            return {name: True}
    return {}


def variants(fmt: QuantFormat, impls: list[str]) -> dict[str, Callable]:
    def reference(w: Tensor, s: Tensor) -> Tensor:
        return reference_fake_quant(w, s, fmt)

    table: dict[str, Callable] = {
        "cuda": lambda w, s: fake_quant(w, s, fmt, "cuda"),
        "eager": reference,
    }
    if "compiled" in impls:
        table["compiled"] = torch.compile(reference, dynamic=False)
    if "compiled_exact" in impls and (options := exact_division_options()):
        table["compiled_exact"] = torch.compile(reference, dynamic=False, options=options)
    return {name: fn for name, fn in table.items() if name in impls}


def bench_size(
    rows: int, cols: int, dtype: torch.dtype, fmt: QuantFormat, args: argparse.Namespace
) -> dict:
    w = torch.randn(rows, cols, device="cuda").to(dtype)
    scale = init_scale(w, fmt)
    grad = torch.randn_like(w)
    w_req, scale_req = w.clone().requires_grad_(), scale.clone().requires_grad_()
    nbytes = w.numel() * w.element_size()
    row: dict = {
        "rows": rows,
        "cols": cols,
        "dtype": str(dtype),
        "format": fmt.name,
        "bits": fmt.bits,
    }

    dst = torch.empty_like(w)
    ms, _ = time_graph(lambda: dst.copy_(w), args.warmup, args.repeats)
    row["copy_gbps"] = 2 * nbytes / ms / 1e6

    # What the replays computed is checked against the eager reference, so that a variant
    # that skips work (or a capture that misses kernels) shows up here, not as speed.
    want_out = reference_fake_quant(w, scale, fmt)
    want_grads = torch.autograd.grad(
        reference_fake_quant(w_req, scale_req, fmt), (w_req, scale_req), grad
    )

    for name, fn in variants(fmt, args.impls).items():
        ms, out = time_graph(lambda fn=fn: fn(w, scale), args.warmup, args.repeats)
        row[f"{name}_fwd_gbps"] = 2 * nbytes / ms / 1e6
        row[f"{name}_out_maxdiff"] = max_diff(out, want_out)

        def fwd_bwd(fn=fn):
            out = fn(w_req, scale_req)
            return torch.autograd.grad(out, (w_req, scale_req), grad)

        ms, (grad_w, grad_scale) = time_graph(fwd_bwd, args.warmup, args.repeats)
        row[f"{name}_fwdbwd_gbps"] = 5 * nbytes / ms / 1e6
        row[f"{name}_fwdbwd_ms"] = ms
        row[f"{name}_grad_w_maxdiff"] = max_diff(grad_w, want_grads[0])
        row[f"{name}_grad_scale_maxrel"] = max_diff(grad_scale, want_grads[1]) / max(
            want_grads[1].abs().max().item(), 1e-30
        )
    torch.cuda.empty_cache()
    return row


def markdown(rows: list[dict], impls: list[str]) -> str:
    impls = [name for name in impls if f"{name}_fwd_gbps" in rows[0]]  # ran on this torch
    head = ["dtype", "format", "bits", "shape", "copy"]
    for name in impls:
        head += [f"{name} fwd", f"{name} fwd+bwd"]
    head += ["cuda fwd+bwd / copy", "results ≠ eager reference"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        cells = [r["dtype"].removeprefix("torch."), r["format"], f"{r['bits']:g}"]
        cells.append(f"{r['rows']}×{r['cols']}")
        cells.append(f"{r['copy_gbps']:,.0f}")
        for name in impls:
            cells += [f"{r[f'{name}_fwd_gbps']:,.0f}", f"{r[f'{name}_fwdbwd_gbps']:,.0f}"]
        ratio = r.get("cuda_fwdbwd_gbps", float("nan")) / r["copy_gbps"]
        cells.append(f"{ratio:.0%}")
        wrong = [n for n in impls if r[f"{n}_out_maxdiff"] > 0 or r[f"{n}_grad_w_maxdiff"] > 0]
        wrong += [n for n in impls if r[f"{n}_grad_scale_maxrel"] > 1e-3]
        cells.append(", ".join(sorted(set(wrong))) or "none")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=parse_sizes, default=DEFAULT_SIZES, help="ROWSxCOLS,...")
    parser.add_argument("--dtypes", default="bf16,fp32")
    parser.add_argument(
        "--bits",
        type=parse_formats,
        default="4",
        help="bit widths of the integer family and float format names, e.g. 1,1.58,4,mxfp4",
    )
    parser.add_argument(
        "--impls",
        default="cuda,eager,compiled,compiled_exact",
        help="compiled_exact: torch.compile with eager's IEEE fp32 division",
    )
    parser.add_argument(
        "--all-bits-size",
        type=lambda text: parse_sizes(text) if text else [],
        default="16384x4096",
        help="also time the kernel alone (bf16) at every bit width and float format at these "
        "sizes ('' off)",
    )
    parser.add_argument("--warmup", type=positive_int, default=5)
    parser.add_argument("--repeats", type=positive_int, default=20)
    parser.add_argument("--out", default="bench/results/fake_quant.json")
    args = parser.parse_args(argv)
    args.impls = args.impls.split(",")
    if unknown := set(args.dtypes.split(",")) - set(DTYPES):
        parser.error(f"--dtypes: unknown {sorted(unknown)}; choose from {sorted(DTYPES)}")
    if not torch.cuda.is_available():
        sys.exit("bench/fake_quant.py needs a CUDA GPU")
    torch._dynamo.config.recompile_limit = 64  # one static graph per shape and dtype

    rows = []
    for dtype_name in args.dtypes.split(","):
        for fmt in args.bits:
            for r, c in args.sizes:
                rows.append(bench_size(r, c, DTYPES[dtype_name], fmt, args))
                print(json.dumps(rows[-1]), flush=True)
    table = markdown(rows, args.impls)

    sweep = []
    kernel_only = argparse.Namespace(**{**vars(args), "impls": ["cuda"]})
    for r, c in args.all_bits_size:
        for fmt in parse_formats(",".join(["1,1.58,2,3,4,6,8", *FLOAT_FORMATS])):
            sweep.append(bench_size(r, c, torch.bfloat16, fmt, kernel_only))
    if sweep:
        table += "\n\n" + markdown(sweep, ["cuda"])

    result = write_record(args.out, rows=rows, all_bits=sweep)
    print(f"\n{result['device']}, torch {result['torch']}, GB/s (bytes read + written)\n")
    print(table)


if __name__ == "__main__":
    main()
