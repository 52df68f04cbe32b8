"""A cell started at the QAT switch from a pretrained Llama (init.source=hf:<folder>): its data
re-tokenized with the model's tokenizer, the pretrained model's loss as fp/val_loss, the law's
D_fp as stated, and the result exportable with the model's own tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from qat.config import RunConfig
from qat.errors import ConfigError
from tests.export.helpers import TEXT, tiny_gpt2, tiny_llama

PRETRAINED_TOKENS = 3_000_000


def corpus(path: Path) -> Path:
    """200 short documents, one file."""
    words = " ".join(TEXT).split()
    docs = [f"Note {i}: " + " ".join(words[i % 40 :] + words[: i % 40]) for i in range(200)]
    path.write_text("\n<|endoftext|>\n".join(docs))
    return path


def config(workdir: Path, source: str, *overrides: str) -> RunConfig:
    from qat.orchestration.grid import expand_grid

    (cell,) = expand_grid(
        [
            f"init.source=hf:{source}",
            f"init.tokens={PRETRAINED_TOKENS}",
            "bits=4",
            "tokens=4096",
            f"data.source={corpus(workdir / 'corpus.txt')}",
            f"data.cache_dir={workdir / 'data'}",
            "data.batch_size=4",
            "data.seq_len=32",
            "data.val_fraction=0.1",
            "data.eval_tokens=2048",
            "trainer.device=cpu",
            "trainer.progress=false",
            f"run_dir={workdir / 'runs'}",
            f"tracking.uri=sqlite:///{workdir}/mlflow.db",
            *overrides,
        ],
        sweeper_params={},
    )
    return cell


@pytest.fixture(scope="module")
def pretrained_cell(tmp_path_factory):
    from qat.cell import run_cell

    workdir = tmp_path_factory.mktemp("init")
    folder = tiny_llama(workdir / "llama", tied=False)
    cell = config(workdir, str(folder))
    return workdir, folder, cell, run_cell(cell)


def test_the_model_and_vocabulary_are_the_pretrained_ones(pretrained_cell):
    _, _, cell, _ = pretrained_cell
    assert (cell.model.dim, cell.model.n_layers, cell.model.n_kv_heads) == (32, 2, 2)
    assert cell.data.vocab_size == 300 and not cell.model.tie_embeddings
    assert cell.trunk == "off"
    assert cell.qat_frac == pytest.approx(4096 / (PRETRAINED_TOKENS + 4096))


def test_mlflow_states_the_laws_inputs(pretrained_cell):
    from mlflow.tracking import MlflowClient

    workdir, _, cell, result = pretrained_cell
    run = MlflowClient(f"sqlite:///{workdir}/mlflow.db").get_run(result.run_id)
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert int(params["tokens_fp"]) == PRETRAINED_TOKENS
    assert int(params["tokens_qat"]) == 4096
    assert int(params["tokens_total"]) == PRETRAINED_TOKENS + 4096
    assert params["init.source"] == cell.init.source
    assert params["model.dim"] == "32"


def test_the_data_is_read_with_the_models_tokenizer_and_fp_loss_is_the_hf_models(
    pretrained_cell,
):
    """fp/val_loss, evaluated before any step, is the HF model's own loss on the held-out
    tokens: the import changed nothing (≤ 1e-4)."""
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qat.data import DatasetInfo, eval_batches

    workdir, folder, cell, result = pretrained_cell
    data = DatasetInfo.load(workdir / "data")
    meta = json.loads((workdir / "data" / "meta.json").read_text())
    assert meta["tokenizer"] == cell.init.source and meta["end_token"] == "<|endoftext|>"
    backend = AutoTokenizer.from_pretrained(folder).backend_tokenizer
    assert Tokenizer.from_file(str(data.tokenizer_path)).to_str() == backend.to_str()
    hf = AutoModelForCausalLM.from_pretrained(folder).eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for x, y in eval_batches(data.val_path, 4, 32, 2048):
            logits = hf(x).logits
            total += torch.nn.functional.cross_entropy(
                logits.flatten(0, 1), y.flatten(), reduction="sum"
            ).item()
            count += y.numel()
    assert result.fp_val_loss == pytest.approx(total / count, abs=1e-4)
    assert result.final_val_loss < result.fp_val_loss  # QAT learned this corpus


def test_the_result_exports_with_the_models_own_tokenizer(pretrained_cell, tmp_path):
    from transformers import AutoTokenizer

    from qat.export.__main__ import main as export_main

    workdir, folder, cell, _ = pretrained_cell
    out = tmp_path / "hf"
    argv = [cell.run_key, "--out", str(out), "--runs-dir", str(workdir / "runs"), "--format"]
    assert export_main([*argv, "hf"]) == 0
    ours, theirs = AutoTokenizer.from_pretrained(out), AutoTokenizer.from_pretrained(folder)
    assert ours.encode("lazy dog") == theirs.encode("lazy dog")
    assert (
        export_main(
            [cell.run_key, "--out", str(tmp_path / "packed"), "--runs-dir", str(workdir / "runs")]
        )
        == 0
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("init.tokens=0",), "init.tokens > 0"),
        (("trainer=packed",), "trainer=torch or deepspeed"),
        (("bits=16",), "a QAT bit width"),
    ],
)
def test_bad_pretrained_settings_are_refused_in_one_line(tmp_path, overrides, message):
    folder = tiny_llama(tmp_path / "llama")
    with pytest.raises(ConfigError, match=message) as refused:
        config(tmp_path, str(folder), *overrides)
    assert "\n" not in str(refused.value)


def test_a_non_llama_init_is_refused_in_one_line(tmp_path):
    with pytest.raises(ConfigError, match="only the Llama architecture"):
        config(tmp_path, str(tiny_gpt2(tmp_path / "gpt2")))


def test_an_init_without_a_tokenizer_is_refused_before_anything_is_written(tmp_path):
    """train.py itself: one line, a non-zero exit, no data, run folder or MLflow store."""
    from tests.integration.conftest import train

    folder = tiny_llama(tmp_path / "llama", tokenizer=False)
    result = train(
        tmp_path / "work",
        tmp_path / "data",
        f"init.source=hf:{folder}",
        "init.tokens=1M",
        "trainer.device=cpu",
    )
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no usable tokenizer" in errors[0]
    # Nothing at all: not even Hydra's log folder (outputs/) of a run that never started.
    assert list((tmp_path / "work").iterdir()) == []
    assert not (tmp_path / "data").exists()
