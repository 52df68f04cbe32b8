"""Training-step throughput and MFU of the 86M Llama-style model: FP against QAT per bit width.

Each variant trains a fresh model for a few steps (bf16 autocast, fused AdamW, torch.compile)
on random tokens; tokens/s comes from the median of a few windows of back-to-back steps
(one sync per window, as in the trainer); the median step time with a sync after every step
is recorded too. FLOPs per token are
6·N_matmul (every Linear, the LM head included) + 12·L·d·T for attention scores and values
(forward + backward, counted over the full T×T square, as PaLM's MFU does, though causal
attention computes about half of it). MFU = FLOPs/token · tokens/s / peak.

torch.compile is applied per transformer block (one compiled graph serves all 12 blocks)
and to the final norm + LM head + loss, so each of the ~15 variants compiles in seconds
rather than the minute a whole-model graph takes; the embedding lookup stays eager.

    python bench/train_step.py --out bench/results/train_step.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict

import torch
import torch.nn.functional as F
from record import write_record
from torch import nn

from qat.config import ModelConfig
from qat.model import Transformer, count_parameters
from qat.quant import QuantLinear, is_full_precision, quant_parameters, quantize_model

CONFIG = ModelConfig(name="llama-86m", dim=768, n_layers=12, n_heads=12, ffn_dim=2112)
VOCAB = 32000
H100_BF16_DENSE_TFLOPS = 989.0
EXCLUDE = ("tok_embeddings", "output")


def matmul_params(model: Transformer) -> int:
    """Weights used in a matmul: every Linear (quantized or not) and the (tied) LM head."""
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear | QuantLinear))


def flops_per_token(model: Transformer, seq_len: int) -> float:
    cfg = model.config
    return 6 * matmul_params(model) + 12 * cfg.n_layers * cfg.dim * seq_len


def build(bits: str, kernel: str, device: torch.device) -> tuple[Transformer, torch.optim.AdamW]:
    torch.manual_seed(0)
    model = Transformer(CONFIG, VOCAB).to(device)
    groups = [{"params": list(model.parameters())}]
    if not is_full_precision(bits):
        quantize_model(model, bits, kernel=kernel, exclude=EXCLUDE)
        groups.append({"params": quant_parameters(model), "weight_decay": 0.0})
    for layer in model.layers:
        layer.compile()
    optimizer = torch.optim.AdamW(groups, lr=1e-4, weight_decay=0.1, fused=True)
    return model, optimizer


def make_step(model: Transformer, optimizer: torch.optim.AdamW):
    @torch.compile
    def head_loss(x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = model.output(model.norm(x))
        return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())

    def step(tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # Cleared first, so the last step's gradients stay for a look after timing.
        optimizer.zero_grad(set_to_none=True)
        # Transformer.forward's body, so that the head and loss can be compiled together.
        with torch.autocast("cuda", dtype=torch.bfloat16):
            x = model.tok_embeddings(tokens)
            rope = model.rope(tokens.shape[1], tokens.device)
            for layer in model.layers:
                x = layer(x, rope)
            loss = head_loss(x, targets)
        loss.backward()
        optimizer.step()
        return loss

    return step


def kernel_breakdown(step, tokens, targets) -> dict[str, float]:
    """GPU milliseconds of one step by kind of kernel (from the torch profiler)."""
    kinds = {  # first match wins: attention kernels may also carry cutlass or sm90 in names
        "attention": ("flash", "fmha", "attention", "sdpa"),
        "matmul": ("gemm", "cutlass", "nvjet", "xmma", "sm90_", "cublas"),
        "fake_quant": ("qat_fake_quant",),
        "optimizer": ("adam", "multi_tensor"),
        "compiled (triton)": ("triton",),
        "eager elementwise": ("elementwise", "reduce_kernel", "embedding", "index"),
    }
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        step(tokens, targets)
        torch.cuda.synchronize()
    totals: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        if event.device_type != torch.autograd.DeviceType.CUDA:
            continue
        name = event.key.lower()
        kind = next((k for k, keys in kinds.items() if any(s in name for s in keys)), "other")
        totals[kind] += event.device_time_total / 1e3
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


def _grad_norm(param: torch.Tensor) -> float | None:
    return None if param.grad is None else param.grad.norm().item()


def run_variant(bits: str, kernel: str, args, device: torch.device, profile: bool) -> dict:
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    model, optimizer = build(bits, kernel, device)
    step = make_step(model, optimizer)
    gen = torch.Generator(device=device).manual_seed(0)
    shape = (args.batch, args.seq_len + 1)
    data = torch.randint(0, VOCAB, shape, device=device, generator=gen)
    tokens, targets = data[:, :-1].contiguous(), data[:, 1:].contiguous()

    started = time.perf_counter()
    first_loss = step(tokens, targets).item()
    for _ in range(args.warmup - 1):
        step(tokens, targets)
    torch.cuda.synchronize()
    warmup_s = time.perf_counter() - started
    # Throughput as a training loop sees it: steps back to back, one sync per window, so the
    # CPU queues work ahead of the GPU (the trainer syncs only when it logs).
    window_s = []
    for _ in range(args.windows):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(args.steps):
            loss = step(tokens, targets)
        end.record()
        end.synchronize()
        window_s.append(start.elapsed_time(end) / 1e3 / args.steps)
    step_s = statistics.median(window_s)
    # And with a sync after every step, which exposes the CPU time of each step's start.
    synced_s = []
    for _ in range(args.steps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        loss = step(tokens, targets)
        end.record()
        end.synchronize()
        synced_s.append(start.elapsed_time(end) / 1e3)
    tokens_per_s = args.batch * args.seq_len / step_s
    flops = flops_per_token(model, args.seq_len)
    non_embedding, total = count_parameters(model)
    row = {
        "bits": bits,
        "kernel": kernel if not is_full_precision(bits) else "-",
        "step_ms": step_s * 1e3,
        "step_ms_windows": [t * 1e3 for t in window_s],
        "tokens_per_s": tokens_per_s,
        "synced_step_ms": statistics.median(synced_s) * 1e3,
        "mfu": flops * tokens_per_s / (args.peak_tflops * 1e12),
        "flops_per_token": flops,
        "n_params_non_embedding": non_embedding,
        "n_params_total": total,
        "n_matmul_params": matmul_params(model),
        "first_loss": first_loss,
        "loss": loss.item(),
        # Nonzero when the matrices train (a backend dropping dL/dw would show 0 or None).
        "wq_grad_norm": _grad_norm(model.layers[0].attention.wq.weight),
        "warmup_s": warmup_s,
        "compiled_graphs": torch._dynamo.utils.counters["stats"]["unique_graphs"],
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30,
    }
    if profile:
        row["gpu_ms_by_kind"] = kernel_breakdown(step, tokens, targets)
    del model, optimizer, step
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    return row


def matmul_tflops() -> float:
    """Measured bf16 dense matmul rate (8192³), the practical ceiling beside the datasheet."""
    a, b = (torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(10):
        a @ b
    end.record()
    end.synchronize()
    return 10 * 2 * 8192**3 / (start.elapsed_time(end) / 1e3) / 1e12


def markdown(rows: list[dict]) -> str:
    fp = statistics.mean(r["tokens_per_s"] for r in rows if r["kernel"] == "-")
    lines = [
        "| bits | kernel | step ms | tokens/s | vs FP (mean of FP runs) | MFU | step ms, synced |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['bits']} | {r['kernel']} | {r['step_ms']:.1f} | {r['tokens_per_s']:,.0f} | "
            f"{r['tokens_per_s'] / fp - 1:+.1%} | {r['mfu']:.1%} | {r['synced_step_ms']:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--bits", default="1,1.58,2,3,4,6,8", help="QAT bit widths (FP always)")
    parser.add_argument("--kernels", default="cuda,reference")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=6, help="steps per timed window")
    parser.add_argument("--windows", type=int, default=3)
    parser.add_argument("--peak-tflops", type=float, default=H100_BF16_DENSE_TFLOPS)
    parser.add_argument("--profile", action="store_true", help="GPU time by kernel kind")
    parser.add_argument("--out", default="bench/results/train_step.json")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("bench/train_step.py needs a CUDA GPU")
    device = torch.device("cuda")
    # Twelve blocks share one compiled graph, but keep room should a guard split them.
    torch._dynamo.config.recompile_limit = 64

    variants = [("16", "-")]
    variants += [(b, k) for k in args.kernels.split(",") for b in args.bits.split(",")]
    # FP once more at the end: the two FP runs bound the noise of the "vs FP" column.
    variants.append(("16", "-"))
    rows = []
    for i, (bits, kernel) in enumerate(variants):
        # Profile the first FP run and the first QAT run, to see where their time goes.
        profile = args.profile and i in (0, 1)
        rows.append(run_variant(bits, kernel, args, device, profile=profile))
        print(json.dumps(rows[-1]), flush=True)

    result = write_record(
        args.out,
        batch=args.batch,
        seq_len=args.seq_len,
        peak_tflops=args.peak_tflops,
        measured_matmul_tflops=matmul_tflops(),
        rows=rows,
    )
    print(f"\n{result['device']}, torch {result['torch']}, batch {args.batch}×{args.seq_len}")
    print(f"bf16 matmul 8192³: {result['measured_matmul_tflops']:.0f} TFLOP/s measured\n")
    print(markdown(rows))


if __name__ == "__main__":
    main()
