import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qat.data import DataError, prepare
from qat.data.corpus import iter_documents
from qat.data.split import (
    check_val_fraction,
    evaluation_note,
    is_validation,
    rank,
    split_documents,
    top_up_validation,
)
from tests.data.helpers import make_documents, write_corpus


def test_fraction_is_roughly_right_and_seed_changes_the_split() -> None:
    docs = make_documents(4000)
    val = {d for d in docs if is_validation(d, 0.1)}
    assert 300 < len(val) < 500
    assert val != {d for d in docs if is_validation(d, 0.1, seed=1)}


@given(st.text(), st.floats(0.01, 0.99))
def test_split_is_a_pure_function_of_the_text(text: str, fraction: float) -> None:
    # Same answer every call (and every process: SHA-256, not Python's salted hash), and a
    # larger validation fraction only ever adds documents to validation.
    assert is_validation(text, fraction) == is_validation(text, fraction)
    if is_validation(text, fraction):
        assert is_validation(text, min(0.99, fraction + 0.1))


def test_known_values_are_stable() -> None:
    # Pinned: a change here would silently reshuffle every prepared dataset.
    expected = [True, True, True, True, True, False, False, False, False, False, True, True]
    assert [is_validation(f"doc {i}", 0.5) for i in range(12)] == expected


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 2.0])
def test_fraction_out_of_range(fraction: float) -> None:
    with pytest.raises(DataError, match=f"val_fraction {fraction}"):
        check_val_fraction(fraction)


def _small_corpus(folder: Path) -> Path:
    """30 files whose hash split at val_fraction 0.02 has no validation document."""
    write_corpus(folder, n_docs=30, seed=0)
    texts = list(iter_documents(str(folder)))
    assert len(texts) == 30 and not any(is_validation(d, 0.02) for d in texts)
    return folder


def test_small_corpus_gets_a_validation_split_for_eval_tokens(tmp_path: Path, capsys) -> None:
    corpus = _small_corpus(tmp_path / "corpus")
    info = prepare(str(corpus), tmp_path / "out", vocab_size=320, min_val_tokens=200)
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["n_val_docs"] >= 1 and meta["n_train_docs"] + meta["n_val_docs"] == 30
    assert info.n_val_tokens >= 200
    # Validation took documents from training: it is at most a quarter of the corpus.
    assert info.n_val_tokens <= 0.3 * (info.n_train_tokens + info.n_val_tokens)
    assert meta["val_top_up"]["reached"] is True
    lines = [line for line in capsys.readouterr().out.splitlines() if "validation:" in line]
    # One document crossed as the nearest (split_documents), the rest to reach the tokens.
    assert lines == [
        f"validation: moved {meta['n_val_docs'] - 1} document(s) from training to hold "
        f"{meta['val_top_up']['val_tokens']:,} tokens (eval_tokens 200)"
    ]


def test_corpus_too_small_for_eval_tokens_says_what_it_did(tmp_path: Path, capsys) -> None:
    corpus = _small_corpus(tmp_path / "corpus")
    info = prepare(str(corpus), tmp_path / "out", vocab_size=320, min_val_tokens=16384)
    total = info.n_train_tokens + info.n_val_tokens
    assert 0 < info.n_val_tokens <= 0.3 * total  # training keeps most of the corpus
    out = capsys.readouterr().out
    assert "tokens < eval_tokens 16,384 asked" in out
    note = evaluation_note(info.n_val_tokens, 16384, seq_len=32)
    assert note is not None
    assert note.startswith(f"validation: {info.n_val_tokens:,} tokens < eval_tokens 16,384 asked")
    assert evaluation_note(info.n_val_tokens, 64, seq_len=32) is None


def test_top_up_follows_the_rank_order_and_keeps_the_plain_split_when_enough() -> None:
    docs = make_documents(200)
    train, val = split_documents(docs, 0.1)
    one_each = lambda texts: [1] * len(texts)  # noqa: E731
    assert top_up_validation(train, val, len(val), one_each)[2] is None
    _, more, top_up = top_up_validation(train, val, len(val) + 5, one_each)
    assert top_up is not None and top_up.moved_docs == 5
    # Exactly the documents a larger val_fraction would have added first.
    ranked = sorted(train, key=rank)
    assert set(more) - set(val) == set(ranked[:5])


def test_split_leaves_neither_side_empty() -> None:
    docs = make_documents(30)
    train, val = split_documents(docs, 0.02)
    assert len(val) == 1 and len(train) == 29
    assert val == [min(docs, key=rank)]
    assert split_documents(docs[:1], 0.02) == (docs[:1], [])
