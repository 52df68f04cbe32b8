"""A Llama-architecture HF model read as our Transformer (qat.pretrained), and our weights
written back as a Llama (qat.hf_llama): logits equal transformers' in float32."""

from __future__ import annotations

import pytest
import torch

from qat.errors import ConfigError
from qat.hf_llama import from_hf_state, to_hf_state
from qat.pretrained import load_pretrained, read_config, strip_prefix
from tests.export.helpers import tiny_gpt2, tiny_llama

TOLERANCE = 1e-4


def hf_logits(folder, ids):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval()
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize(("tied", "kv_heads"), [(True, 2), (False, 4)])
def test_imported_logits_equal_the_hf_models(tmp_path, tied, kv_heads):
    folder = tiny_llama(tmp_path / "llama", tied=tied, kv_heads=kv_heads)
    pretrained = load_pretrained(str(folder))
    assert pretrained.shape.tie_embeddings is tied
    assert pretrained.shape.n_kv_heads == kv_heads and pretrained.shape.rope_theta == 5000.0
    ids = torch.tensor([pretrained.tokenizer.encode("The quick brown fox jumps")])
    with torch.no_grad():
        ours = pretrained.model()(ids)
    theirs = hf_logits(folder, ids)
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().max().item() <= TOLERANCE


def test_the_llama_mapping_round_trips(tmp_path):
    folder = tiny_llama(tmp_path / "llama", tied=False)
    pretrained = load_pretrained(str(folder))
    ours = pretrained.weights
    hf = to_hf_state(ours, pretrained.shape)
    back = from_hf_state(hf, pretrained.shape)
    assert set(back) == set(ours)
    assert all(torch.equal(back[name], ours[name]) for name in ours)
    # RoPE layouts differ: q's rows are permuted within each head, v's are not.
    q, v = "layers.0.attention.wq.weight", "layers.0.attention.wv.weight"
    assert not torch.equal(hf["model.layers.0.self_attn.q_proj.weight"], ours[q])
    assert torch.equal(hf["model.layers.0.self_attn.v_proj.weight"], ours[v])


def test_a_non_llama_model_is_refused_in_one_line(tmp_path):
    folder = tiny_gpt2(tmp_path / "gpt2")
    with pytest.raises(ConfigError, match="only the Llama architecture") as refused:
        read_config(str(folder))
    assert "\n" not in str(refused.value)


def test_a_model_without_a_tokenizer_is_refused_in_one_line(tmp_path):
    folder = tiny_llama(tmp_path / "llama", tokenizer=False)
    with pytest.raises(ConfigError, match="no usable tokenizer") as refused:
        load_pretrained(str(folder))
    assert "\n" not in str(refused.value)


def test_a_missing_model_is_refused_offline(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the Hugging Face model"):
        read_config(str(tmp_path / "nothing-here"))
    with pytest.raises(ConfigError, match="hf:<model name or local folder>"):
        strip_prefix("llama")
