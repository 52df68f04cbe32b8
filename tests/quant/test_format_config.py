"""quant.format in the run configuration: int keeps every recorded key, a float format is a new
cell on the same FP trunk (and in the same pack), and bad combinations are refused in one line."""

from __future__ import annotations

import pytest

from qat.config import QUANT_FORMAT_BITS, RunConfig
from qat.errors import ConfigError
from qat.quant import ALLOWED_FORMATS, FLOAT_FORMATS
from qat.tracking import run_name
from qat.trunk import trunk_key


def tree(bits=4, trainer="torch", **quant):
    return {
        "bits": bits,
        "qat_frac": 0.3,
        "tokens": "2M",
        "fusion": False,
        "seed": 0,
        "model": {"name": "nano", "dim": 64, "n_layers": 2, "n_heads": 4, "ffn_dim": 176},
        "data": {"source": "bundled", "vocab_size": 4096, "seq_len": 128, "batch_size": 32},
        "quant": quant,
        "trainer": {"backend": trainer},
    }


def test_int_keeps_the_recorded_keys():
    for config in (RunConfig.from_dict(tree()), RunConfig.from_dict(tree(format="int"))):
        # The keys this cell had before quant.format existed (tests/core/test_qat_knobs.py).
        assert config.run_key == "a63977a0bec86ff5"
        assert trunk_key(config) == "3626b90b830890c3"
        assert run_name(config).startswith("nano-b4-f0.3-")


def test_a_float_format_is_a_new_cell_on_the_same_trunk():
    base = RunConfig.from_dict(tree())
    keys = {base.run_key}
    for name, bits in (("fp4_e2m1", 4), ("mxfp4", 4), ("nvfp4", 4), ("fp8_e4m3", 8)):
        config = RunConfig.from_dict(tree(bits=bits, format=name))
        assert config.science()["quant"]["format"] == name
        assert trunk_key(config) == trunk_key(base)
        assert run_name(config).startswith(f"nano-{name}-f0.3-")
        keys.add(config.run_key)
    assert len(keys) == 5
    # An FP-only cell has no QAT phase: the format does not change it.
    fp = RunConfig.from_dict(tree(bits=16))
    assert RunConfig.from_dict(tree(bits=16, format="mxfp4")).run_key == fp.run_key


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (tree(format="fp5"), "quant.format='fp5' is not supported; allowed: int, fp4_e2m1, "),
        (tree(bits=6, format="mxfp4"), "expected bits=4 (or 16, FP only) with quant.format=mxfp4"),
        (tree(format="fp4_e2m1", embeddings=True), "quant.embeddings=false with quant.format"),
    ],
)
def test_bad_combinations_are_one_line(bad, message):
    with pytest.raises(ConfigError) as info:
        RunConfig.from_dict(bad)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_cells_of_every_format_make_one_pack():
    """trainer=packed takes every format; cells that differ only in it train as one pack, each
    member with its own format (tests/integration/test_packed_formats.py trains such a pack)."""
    from qat.engine.packed import plan_members
    from qat.orchestration.packs import group_packs

    cells = [RunConfig.from_dict(tree(trainer="packed"))]
    cells += [
        RunConfig.from_dict(tree(bits=fmt.element.bits, format=name, trainer="packed"))
        for name, fmt in FLOAT_FORMATS.items()
        if fmt.element is not None
    ]
    assert group_packs(cells, lambda config: None) == [cells]
    (lineage,) = plan_members(cells)
    formats = {member.config.quant.format: member.fmt for member in lineage.members}
    assert {name: fmt.name for name, fmt in formats.items() if fmt is not None} == {
        "int": "int4",
        **{name: name for name in FLOAT_FORMATS},
    }


@pytest.mark.parametrize("name", FLOAT_FORMATS)
def test_a_float_format_takes_the_cuda_kernel_which_is_no_part_of_the_run_key(name):
    bits = FLOAT_FORMATS[name].element.bits  # type: ignore[union-attr]  # float formats have one
    on_cuda = RunConfig.from_dict(tree(bits=bits, format=name, kernel="cuda"))
    assert on_cuda.quant.kernel == "cuda"
    assert on_cuda.run_key == RunConfig.from_dict(tree(bits=bits, format=name)).run_key


def test_the_config_knows_every_format_and_its_element_bits():
    assert tuple(QUANT_FORMAT_BITS) == ALLOWED_FORMATS
    for name, fmt in FLOAT_FORMATS.items():
        assert fmt.element is not None and QUANT_FORMAT_BITS[name] == fmt.element.bits


def test_export_encodes_each_layer_in_the_runs_format():
    from qat.export.weights import layer_format

    assert layer_format(RunConfig.from_dict(tree()), "layers.0.attention.wq").name == "int4"
    fmt = layer_format(RunConfig.from_dict(tree(format="mxfp4")), "layers.0.attention.wq")
    assert fmt is FLOAT_FORMATS["mxfp4"]
