"""Export of real smoke-grid cells (trained here, in process, on the bundled corpus; an integer,
a ternary and an NVFP4 one): the packed folder loads back to the model the run evaluated, the hf
folder loads in transformers with our logits, a generation comes out, and bad input writes
nothing."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from qat.config import RunConfig
from qat.export import load
from qat.export.__main__ import main as export_main
from qat.generate import main as generate_main
from qat.quant import reference_fake_quant, resolve_format
from tests.conftest import VOCAB

SMOKE = (
    "grid=smoke",
    f"data.vocab_size={VOCAB}",
    "data.batch_size=4",
    "data.seq_len=64",
    "data.eval_tokens=8192",
    "schedule.warmup_tokens=2K",
    "tokens=20K",
    "qat_frac=0.5",
    "trainer.device=cpu",
    "trainer.progress=false",
)


def cell(workdir: Path, *overrides: str) -> RunConfig:
    from qat.orchestration.grid import expand_grid

    (config,) = expand_grid(
        [
            *SMOKE,
            *overrides,
            f"run_dir={workdir / 'runs'}",
            f"tracking.uri=sqlite:///{workdir}/mlflow.db",
        ],
        sweeper_params={},
    )
    return config


@pytest.fixture(scope="module")
def cells(tmp_path_factory, data_root):
    """A 2-bit cell (trainer=torch), a ternary one (trainer=packed) and an NVFP4 one (a float
    format, block-scaled; trainer=torch), finished; all three share one FP trunk."""
    from qat.cell import run_cell
    from qat.pack import run_single

    os.environ["QAT_DATA_DIR"] = str(data_root)
    workdir = tmp_path_factory.mktemp("export")
    torch_cell, packed_cell = cell(workdir, "bits=2"), cell(workdir, "bits=1.58", "trainer=packed")
    float_cell = cell(workdir, "bits=4", "quant.format=nvfp4")
    return workdir, {
        "torch": (torch_cell, run_cell(torch_cell)),
        "packed": (packed_cell, run_single(packed_cell)),
        "nvfp4": (float_cell, run_cell(float_cell)),
    }


def evaluate(model: torch.nn.Module, config: RunConfig, data_root: Path) -> float:
    """The trainer's evaluation (fp32 on the CPU): summed token losses over the held-out tokens."""
    from qat.data import DatasetInfo, eval_batches

    data = DatasetInfo.load(data_root / f"bundled-v{VOCAB}")
    d = config.data
    total, count = 0.0, 0
    with torch.no_grad():
        for x, y in eval_batches(data.val_path, d.batch_size, d.seq_len, d.eval_tokens):
            logits = model(x)
            loss = torch.nn.functional.cross_entropy(
                logits.flatten(0, 1).float(), y.flatten(), reduction="sum"
            )
            total += loss.item()
            count += y.numel()
    return total / count


def export(workdir: Path, run: str, out: Path, *flags: str) -> int:
    return export_main(
        [
            run,
            *("--out", str(out), "--runs-dir", str(workdir / "runs")),
            *("--tracking-uri", f"sqlite:///{workdir}/mlflow.db"),
            *flags,
        ]
    )


@pytest.mark.parametrize("backend", ["torch", "packed", "nvfp4"])
def test_a_packed_export_is_the_model_the_run_evaluated(cells, data_root, tmp_path, backend):
    workdir, trained = cells
    config, result = trained[backend]
    out = tmp_path / "packed"
    assert export(workdir, config.run_key, out) == 0
    exported = load(out)
    assert evaluate(exported.model, config, data_root) == pytest.approx(
        result.final_val_loss, rel=1e-6
    )
    # Bit for bit: each dequantized weight is the checkpoint's fake-quantized weight.
    from qat.checkpoint import latest_checkpoint

    final = latest_checkpoint(workdir / "runs" / config.run_key / "checkpoints")
    assert final is not None
    state, fmt = final.model_state(), resolve_format(config.bits, config.quant.format)
    weights = exported.model.state_dict()
    layer = "layers.1.feed_forward.w2"
    expected = reference_fake_quant(state[f"{layer}.weight"], state[f"{layer}.scale"], fmt)
    assert torch.equal(weights[f"{layer}.weight"], expected)


def test_a_cell_can_be_named_by_its_overrides(cells, tmp_path, capsys):
    workdir, trained = cells
    config, _ = trained["torch"]
    overrides = [*SMOKE, "bits=2", f"run_dir={workdir / 'runs'}"]
    assert export_main([*overrides, "--out", str(tmp_path / "out")]) == 0
    assert load(tmp_path / "out").info["run_key"] == config.run_key
    assert export_main([*SMOKE, "--out", str(tmp_path / "grid")]) == 1  # the whole grid
    assert "name exactly one" in one_error_line(capsys)


def test_packed_weights_take_bits_over_eight(cells, tmp_path):
    from safetensors import safe_open

    workdir, trained = cells
    config, _ = trained["packed"]  # ternary: five trits a byte
    out = tmp_path / "packed"
    assert export(workdir, config.run_key, out) == 0
    with safe_open(str(out / "model.safetensors"), framework="pt") as handle:
        codes = handle.get_tensor("layers.0.feed_forward.w1.codes")
        scale = handle.get_tensor("layers.0.feed_forward.w1.scale")
    ffn, dim = config.model.ffn_dim, config.model.dim
    assert codes.dtype == torch.uint8 and codes.numel() == -(-ffn * dim // 5)
    assert scale.shape == (ffn, 1) and scale.dtype == torch.float32


def test_an_hf_export_loads_in_transformers_with_our_logits(cells, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    workdir, trained = cells
    config, result = trained["torch"]
    assert export(workdir, result.run_id, tmp_path / "hf", "--format", "hf") == 0  # an MLflow id
    assert export(workdir, config.run_key, tmp_path / "packed") == 0
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "hf", local_files_only=True)
    ids = torch.tensor([tokenizer.encode("Four score and seven years ago our fathers")])
    with torch.no_grad():
        theirs, ours = hf(ids).logits, load(tmp_path / "packed").model(ids)
    assert (theirs - ours).abs().max().item() <= 1e-4
    capsys.readouterr()
    prompt = "The people of the United States"
    assert generate_main([str(tmp_path / "hf"), "--prompt", prompt, "--max-tokens", "5"]) == 0
    from_hf = capsys.readouterr().out
    assert generate_main([str(tmp_path / "packed"), "--prompt", prompt, "--max-tokens", "5"]) == 0
    assert capsys.readouterr().out == from_hf  # same model, same seed, same words
    assert from_hf.startswith(prompt) and len(from_hf.strip()) > len(prompt)


def test_a_float_format_cells_hf_export_computes_its_fake_quantized_logits(cells, tmp_path):
    """The NVFP4 cell's checkpoint in our Transformer with fake quantization, and its hf folder
    in transformers: the same logits."""
    from transformers import LlamaForCausalLM

    from qat.checkpoint import latest_checkpoint
    from qat.model import Transformer
    from qat.quant import quantize_model

    workdir, trained = cells
    config, _ = trained["nvfp4"]
    assert export(workdir, config.run_key, tmp_path / "hf", "--format", "hf") == 0
    final = latest_checkpoint(workdir / "runs" / config.run_key / "checkpoints")
    assert final is not None
    ours = Transformer(config.model, VOCAB)
    quantize_model(ours, resolve_format(config.bits, config.quant.format), "reference")
    ours.load_state_dict(final.model_state())
    hf = LlamaForCausalLM.from_pretrained(tmp_path / "hf", local_files_only=True).eval()
    ids = torch.randint(0, VOCAB, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (hf(ids).logits - ours.eval()(ids)).abs().max().item() <= 1e-4


def test_log_puts_the_export_in_the_cells_mlflow_run(cells, tmp_path):
    from mlflow.tracking import MlflowClient

    workdir, trained = cells
    config, result = trained["torch"]
    out = tmp_path / "packed"
    assert export(workdir, str(workdir / "runs" / config.run_key), out, "--log") == 0
    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    logged = {a.path for a in client.list_artifacts(result.run_id, "export/packed")}
    assert logged == {f"export/packed/{f.name}" for f in out.iterdir()}


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    return err[0]


def test_an_unfinished_run_is_refused_and_nothing_written(cells, tmp_path, capsys):
    workdir, trained = cells
    config, _ = trained["torch"]
    unfinished = tmp_path / "runs" / config.run_key
    shutil.copytree(workdir / "runs" / config.run_key, unfinished)
    final = max((unfinished / "checkpoints").iterdir(), key=lambda p: int(p.name))
    shutil.rmtree(final)  # as if killed before its end
    assert export_main([str(unfinished), "--out", str(tmp_path / "out")]) == 1
    assert "has not finished" in one_error_line(capsys)
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["runs"]


def test_a_missing_tokenizer_is_refused_and_nothing_written(cells, tmp_path, capsys, monkeypatch):
    workdir, trained = cells
    config, _ = trained["torch"]
    monkeypatch.setenv("QAT_DATA_DIR", str(tmp_path / "no-data"))
    assert export(workdir, config.run_key, tmp_path / "out", "--format", "hf") == 1
    assert "tokenizer" in one_error_line(capsys)
    assert list(tmp_path.iterdir()) == []


def test_an_unknown_run_and_an_existing_folder_are_refused(cells, tmp_path, capsys):
    workdir, trained = cells
    config, _ = trained["torch"]
    assert export(workdir, "0123abcd0123abcd", tmp_path / "out") == 1
    assert "neither a run folder" in one_error_line(capsys)
    (tmp_path / "taken").mkdir()
    assert export(workdir, config.run_key, tmp_path / "taken") == 1
    assert "exists already" in one_error_line(capsys)
    assert list((tmp_path / "taken").iterdir()) == []
