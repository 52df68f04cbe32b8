"""Budgets in tokens per parameter: tokens = tokens_per_param × N, resolved per model, seen by the
run key, the trunk key and the grid planner; bad values are one line."""

from pathlib import Path

import pytest
import torch
import yaml

from qat.config import DEFAULT_TOKENS, ModelConfig, RunConfig
from qat.errors import ConfigError
from qat.model import Transformer, count_parameters
from qat.orchestration.grid import CONF_DIR, expand_grid
from qat.orchestration.trunk_plan import plan_grid

MODELS = sorted(Path(CONF_DIR, "model").glob("*.yaml"))


def tree(**overrides):
    base = {
        "bits": 4,
        "qat_frac": 0.3,
        "fusion": False,
        "seed": 0,
        "model": {"name": "nano", "dim": 64, "n_layers": 2, "n_heads": 4, "ffn_dim": 176},
        "data": {"source": "bundled", "vocab_size": 4096, "seq_len": 128, "batch_size": 32},
    }
    base.update(overrides)
    return base


@pytest.mark.parametrize("path", MODELS, ids=[p.stem for p in MODELS])
def test_n_from_the_shape_is_what_the_built_model_counts(path):
    model = ModelConfig(**yaml.safe_load(path.read_text()))
    with torch.device("meta"):  # llama-2.2b on the meta device: shapes, no memory
        built = Transformer(model, vocab_size=4096)
    assert model.non_embedding_params() == count_parameters(built)[0]


def test_grouped_query_attention_counts_fewer_key_value_weights():
    full = ModelConfig(name="x", dim=64, n_layers=2, n_heads=4, ffn_dim=128)
    gqa = ModelConfig(name="x", dim=64, n_layers=2, n_heads=4, ffn_dim=128, n_kv_heads=2)
    with torch.device("meta"):
        counted = count_parameters(Transformer(gqa, vocab_size=10))[0]
    assert gqa.non_embedding_params() == counted < full.non_embedding_params()


def test_tokens_are_tokens_per_param_times_n():
    config = RunConfig.from_dict(tree(tokens_per_param=80))
    n = config.model.non_embedding_params()
    assert config.tokens == round(80 * n)
    assert config.tokens_per_param == 80.0


def test_neither_set_gives_the_default_budget():
    assert RunConfig.from_dict(tree()).tokens == DEFAULT_TOKENS
    assert RunConfig.from_dict(tree(tokens=None, tokens_per_param=None)).tokens == DEFAULT_TOKENS


def test_the_run_key_sees_the_resolved_budget_only():
    by_ratio = RunConfig.from_dict(tree(tokens_per_param=80))
    by_count = RunConfig.from_dict(tree(tokens=by_ratio.tokens))
    assert by_ratio.run_key == by_count.run_key  # one cell, however its budget was written
    assert RunConfig.from_dict(tree(tokens_per_param=81)).run_key != by_ratio.run_key


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"tokens_per_param": 0}, r"tokens_per_param=0 must be a positive number"),
        ({"tokens_per_param": -20}, r"tokens_per_param=-20 must be a positive number"),
        ({"tokens_per_param": "lots"}, r"tokens_per_param='lots' must be a positive number"),
        ({"tokens_per_param": True}, r"tokens_per_param=True must be a positive number"),
        ({"tokens_per_param": 20, "tokens": "2M"}, r"tokens='2M' and tokens_per_param=20 are both"),
        ({"tokens_per_param": 0.1}, r"tokens_per_param=0.1 × N of model 'nano'\) >= 4 optimizer"),
    ],
)
def test_bad_budgets_are_one_line_errors(override, message):
    with pytest.raises(ConfigError, match=message) as info:
        RunConfig.from_dict(tree(**override))
    assert "\n" not in str(info.value)


def test_a_sweep_gives_each_size_its_own_budgets_keys_and_trunks():
    cells = expand_grid(["model=nano,mini-s", "tokens_per_param=20,80", "bits=4"])
    by_model: dict[str, list[RunConfig]] = {}
    for config in cells:
        by_model.setdefault(config.model.name, []).append(config)
    for name, configs in by_model.items():
        n = configs[0].model.non_embedding_params()
        assert sorted(c.tokens for c in configs) == [round(20 * n), round(80 * n)], name
    assert len({c.run_key for c in cells}) == 4
    plans, naive, _ = plan_grid(cells)
    assert len(plans) == 2  # one trunk per size, shared by its two budgets
    steps = cells[0].data.seq_len * cells[0].data.batch_size
    assert abs(naive - sum(c.tokens for c in cells)) <= len(cells) * steps  # rounded to steps
    assert {c.tokens_per_param for c in cells} == {20.0, 80.0}


def test_budgets_written_in_tokens_per_parameter_share_one_pack_and_trunk():
    """A pack's members may differ in budget, however it was written: a (model, seed) sweep over
    tokens_per_param is one pack with one trunk, not a pack (and a trunk trained again) per ratio.
    """
    from qat.engine.packed import plan_members
    from qat.orchestration.grid import expand_grid
    from qat.orchestration.packs import group_packs

    cells = expand_grid(
        ["model=nano", "trainer=packed", "tokens_per_param=20,80", "bits=4", "qat_frac=0.2,0.5"]
    )
    assert len({cell.tokens for cell in cells}) == 2
    (pack,) = group_packs(cells, lambda config: None)
    assert sorted(cell.run_key for cell in pack) == sorted(cell.run_key for cell in cells)
    (lineage,) = plan_members(cells)
    assert len(lineage.members) == len(cells)
