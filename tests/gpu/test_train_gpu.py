"""The training loop on a CUDA GPU: bf16 autocast, the CUDA fake-quant kernel picked by
quant.kernel=auto, torch.compile through the kernel's custom op, the QAT switch, checkpoints."""

from __future__ import annotations

import math

import pytest
import torch

from qat.config import RunConfig
from qat.data import prepare
from qat.engine import Trainer, make_backend
from qat.quant import QuantLinear

pytestmark = pytest.mark.gpu  # deselected without CUDA (tests/conftest.py)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("text")
    words = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "and", "cat"]
    generator = torch.Generator().manual_seed(0)
    for doc in range(200):
        picks = torch.randint(0, len(words), (400,), generator=generator).tolist()
        (folder / f"doc{doc}.txt").write_text(" ".join(words[i] for i in picks) + ".\n")
    return prepare(str(folder), tmp_path_factory.mktemp("shards") / "toy", vocab_size=512)


def config(data_dir, compile_model: bool, bits: float = 4.0, backend: str = "torch") -> RunConfig:
    return RunConfig.from_dict(
        {
            "bits": bits,
            "qat_frac": 0.5,
            "tokens": 64 * 256 * 40,
            "fusion": False,
            "seed": 0,
            "model": {"name": "nano", "dim": 64, "n_layers": 2, "n_heads": 4, "ffn_dim": 176},
            "data": {
                "source": "toy",
                "vocab_size": 512,
                "seq_len": 256,
                "batch_size": 64,
                "eval_tokens": 16384,
                "cache_dir": str(data_dir),
            },
            "optim": {"lr": 1e-2},
            "trainer": {
                "backend": backend,
                "device": "cuda",
                "compile": compile_model,
                "progress": False,
            },
            "trunk": "off" if backend == "deepspeed" else "share",
        }
    )


@pytest.mark.parametrize("compile_model", [False, True])
def test_qat_cell_trains_on_the_gpu_with_the_cuda_kernel(tmp_path, corpus, compile_model):
    cfg = config(corpus.out_dir, compile_model)
    trainer = Trainer(cfg, corpus, tmp_path / "ckpt", make_backend(cfg))
    assert trainer.autocast_dtype is torch.bfloat16
    initial = trainer.evaluate()
    final, fp = trainer.train(lambda metrics, tokens: None)
    assert math.isfinite(final) and fp is not None
    assert final < initial - 1.0  # it learned the toy language
    quantized = [m for m in trainer.model.modules() if isinstance(m, QuantLinear)]
    assert quantized and all(m.kernel in ("auto", "cuda") for m in quantized)
    from qat.quant import resolve_kernel

    assert resolve_kernel("auto", quantized[0].weight) == "cuda"
    assert all(m.scale.grad is None or torch.isfinite(m.scale.grad).all() for m in quantized)
    assert list((tmp_path / "ckpt").iterdir())  # checkpoints were written from the GPU


@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4"])
def test_a_float_format_cell_trains_through_the_kernel_as_through_the_reference(
    tmp_path, corpus, fmt
):
    """quant.kernel=auto takes the CUDA kernel for a float format: ŵ and dL/dw equal the
    reference's bit for bit and dL/dα differs by fp32 summation order only, so a short run
    ends where the reference's run ends, up to that rounding carried through Adam."""
    finals = {}
    for kernel in ("auto", "reference"):
        cfg = config(corpus.out_dir, compile_model=False)
        cfg = RunConfig.from_dict({**cfg.to_dict(), "quant": {"format": fmt, "kernel": kernel}})
        trainer = Trainer(cfg, corpus, tmp_path / kernel, make_backend(cfg))
        initial = trainer.evaluate()
        finals[kernel], _ = trainer.train(lambda metrics, tokens: None)
        assert finals[kernel] < initial - 1.0
    assert finals["auto"] == pytest.approx(finals["reference"], rel=2e-3)


def test_compiled_reference_on_gpu_is_refused(tmp_path, corpus):
    from qat.errors import ConfigError

    cfg = config(corpus.out_dir, compile_model=True)
    cfg = RunConfig.from_dict({**cfg.to_dict(), "quant": {"kernel": "reference"}})
    with pytest.raises(ConfigError, match=r"trainer\.compile=true with the reference"):
        Trainer(cfg, corpus, tmp_path / "ckpt", make_backend(cfg))


def test_deepspeed_engine_forward_runs_in_bf16(tmp_path, corpus):
    # Without its torch_autocast section the engine turns an outer CUDA autocast off and the
    # model trains in fp32 (4.8x slower on an H200: docs/benchmarks.md).
    cfg = config(corpus.out_dir, compile_model=False, backend="deepspeed")
    trainer = Trainer(cfg, corpus, tmp_path / "ck", make_backend(cfg))
    inputs, _ = trainer.loader.next_batch()
    with trainer._autocast():
        logits = trainer.forward(inputs[:2].to(trainer.device))
    assert logits.dtype == torch.bfloat16
