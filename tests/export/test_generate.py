"""Sampling (qat.generate.sample) on a small random Transformer: seeded, top-k, greedy, stop."""

from __future__ import annotations

import dataclasses

import torch

from qat.config import ModelConfig
from qat.generate import main, sample
from qat.model import Transformer

SHAPE = ModelConfig(name="t", dim=32, n_layers=1, n_heads=4, ffn_dim=48)


def model() -> Transformer:
    torch.manual_seed(0)
    # A large init spreads the logits, so sampling has real choices to make.
    return Transformer(dataclasses.replace(SHAPE, init_std=0.5), 64).eval()


def test_a_seed_fixes_the_sample_and_top_k_one_is_greedy():
    net = model()
    prompt = [1, 2, 3]
    first = sample(net, prompt, 20, temperature=1.0, top_k=0, seed=7)
    assert first == sample(net, prompt, 20, temperature=1.0, top_k=0, seed=7)
    assert len(first) == 20 and all(0 <= t < 64 for t in first)
    others = [sample(net, prompt, 20, temperature=1.0, top_k=0, seed=s) for s in range(3)]
    assert any(o != first for o in others)
    greedy = sample(net, prompt, 20, temperature=0.0)
    assert sample(net, prompt, 20, temperature=1.0, top_k=1, seed=3) == greedy


def test_generation_stops_at_the_end_token_and_respects_the_context():
    net = model()
    greedy = sample(net, [5], 10, temperature=0.0)
    stop = greedy[3]
    cut = sample(net, [5], 10, temperature=0.0, eos_id=stop)
    assert cut == greedy[: greedy.index(stop)]
    # A context of one token: each step sees only the last token.
    short = sample(net, [5, 9, 9, 9], 4, temperature=0.0, context=1)
    assert short[0] == sample(net, [9], 1, temperature=0.0)[0]


def test_a_folder_that_is_no_export_is_one_line(tmp_path, capsys):
    assert main([str(tmp_path), "--prompt", "hello"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "not an export folder" in err[0]
