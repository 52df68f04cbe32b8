"""What the run key cannot see is still checked: a cell never counts as FINISHED, and never
branches from a trunk, when those weights were trained on other data (or in another precision)
than this launch would use; the refusal is one line, before any MLflow run is opened."""

from __future__ import annotations

import random

import pytest

from tests.integration.conftest import error_lines, runs, train

WORDS = "the quick brown fox jumps over a lazy dog and cat sat on mat".split()  # noqa: SIM905
CELL = (
    "model=nano",
    "data.vocab_size=512",
    "data.batch_size=4",
    "data.seq_len=64",
    "data.eval_tokens=2048",
    "data.val_fraction=0.1",
    "schedule.warmup_tokens=1K",
    "tokens=20K",
    "qat_frac=0.5",
)


def write_corpus(folder, seed: int) -> None:
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for doc in range(60):
        text = " ".join(rng.choice(WORDS) for _ in range(300))
        (folder / f"doc{doc}.txt").write_text(text + ".\n")


def test_a_changed_corpus_is_refused_by_a_finished_cell_and_by_its_trunk(tmp_path):
    corpus = tmp_path / "corpus"
    write_corpus(corpus, seed=0)
    source = f"data.source={corpus}"
    first = train(tmp_path / "work", tmp_path / "data1", *CELL, source, "bits=4")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "branched from trunk" in first.stdout

    # Same folder, new text, a fresh data cache: the same run keys, other token data.
    write_corpus(corpus, seed=1)
    again = train(tmp_path / "work", tmp_path / "data2", *CELL, source, "bits=4")
    assert again.returncode == 2
    (line,) = error_lines(again.stderr)
    assert "is FINISHED as MLflow run" in line and "data_fingerprint" in line

    other_bits = train(tmp_path / "work", tmp_path / "data2", *CELL, source, "bits=2")
    assert other_bits.returncode == 2
    (line,) = error_lines(other_bits.stderr)
    assert line.startswith("error: trunk ") and "data_fingerprint" in line
    # Refused before anything was opened: the store holds only the first cell's run.
    assert [r.data.params["bits"] for r in runs(tmp_path / "work")] == ["4.0"]

    # The first data again: the finished cell is skipped, the trunk is branched from.
    write_corpus(corpus, seed=0)
    skipped = train(tmp_path / "work", tmp_path / "data1", *CELL, source, "bits=4")
    assert skipped.returncode == 0 and "already FINISHED" in skipped.stdout
    branched = train(tmp_path / "work", tmp_path / "data1", *CELL, source, "bits=2")
    assert branched.returncode == 0, branched.stderr[-3000:]
    assert "branched from trunk" in branched.stdout


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_an_explicit_precision_is_a_cell_of_its_own(tmp_path, precision):
    from qat.orchestration.grid import expand_grid
    from qat.trunk import trunk_key

    (auto,) = expand_grid(["bits=4"])
    (chosen,) = expand_grid(["bits=4", f"trainer.precision={precision}"])
    assert chosen.run_key != auto.run_key
    assert trunk_key(chosen) != trunk_key(auto)
