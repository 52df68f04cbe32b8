import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qat.data import DataError, TokenLoader, eval_batches, unigram_entropy, write_shard

VOCAB = 50_000


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """Shards whose token i is i: a window is then recognisable from its first token."""
    folder = tmp_path_factory.mktemp("shards")
    paths = {}
    for n_tokens in (17, 100, 1001):
        paths[n_tokens] = folder / f"{n_tokens}.bin"
        write_shard(paths[n_tokens], np.arange(n_tokens), VOCAB)
    return paths


def _windows(x: torch.Tensor, seq_len: int) -> list[int]:
    return (x[:, 0] // seq_len).tolist()


def test_batches_are_shifted_windows(shards: dict[int, Path]) -> None:
    loader = TokenLoader(shards[1001], batch_size=4, seq_len=10, seed=0, vocab_size=VOCAB)
    x, y = loader.next_batch()
    assert x.shape == y.shape == (4, 10)
    assert x.dtype == y.dtype == torch.long
    assert x.is_contiguous() and y.is_contiguous()
    torch.testing.assert_close(y[:, :-1], x[:, 1:])
    for row_x, row_y, window in zip(x, y, _windows(x, 10), strict=True):
        start = window * 10
        assert row_x.tolist() == list(range(start, start + 10))
        assert row_y.tolist() == list(range(start + 1, start + 11))
    assert loader.tokens_per_batch == 40


def test_epochs_visit_every_window_once(shards: dict[int, Path]) -> None:
    # 1001 tokens, seq_len 10: windows 0..99, the last ending on token 1000.
    loader = TokenLoader(shards[1001], batch_size=7, seq_len=10, seed=3)
    assert loader.n_windows == 100
    seen = [w for _ in range(30) for w in _windows(loader.next_batch()[0], 10)]  # 210 windows
    perms = [np.random.Generator(np.random.PCG64([3, e])).permutation(100) for e in range(3)]
    assert seen == np.concatenate(perms)[:210].tolist()
    assert sorted(seen[:100]) == sorted(seen[100:200]) == list(range(100))
    assert seen[:100] != seen[100:200]  # each epoch has its own order
    assert loader.state_dict() == {"epoch": 2, "position": 10}
    assert loader.epochs_for(2000) == 2.0


def test_seed_changes_the_order(shards: dict[int, Path]) -> None:
    a = TokenLoader(shards[1001], 8, 10, seed=0).next_batch()[0]
    b = TokenLoader(shards[1001], 8, 10, seed=1).next_batch()[0]
    assert not torch.equal(a, b)


def test_batch_larger_than_an_epoch(shards: dict[int, Path]) -> None:
    loader = TokenLoader(shards[17], batch_size=5, seq_len=8, seed=0)  # 2 windows
    x, _ = loader.next_batch()
    assert sorted(_windows(x, 8)[:2]) == sorted(_windows(x, 8)[2:4]) == [0, 1]
    assert loader.state_dict() == {"epoch": 2, "position": 1}


@settings(max_examples=60, deadline=None)
@given(
    n_tokens=st.sampled_from([17, 100, 1001]),
    seq_len=st.integers(1, 16),
    batch_size=st.integers(1, 9),
    seed=st.integers(0, 2**32 - 1),
    cut=st.integers(0, 40),
    more=st.integers(1, 10),
)
def test_resume_is_exact(
    shards: dict[int, Path],
    n_tokens: int,
    seq_len: int,
    batch_size: int,
    seed: int,
    cut: int,
    more: int,
) -> None:
    uninterrupted = TokenLoader(shards[n_tokens], batch_size, seq_len, seed)
    expected = [uninterrupted.next_batch() for _ in range(cut + more)][cut:]

    first = TokenLoader(shards[n_tokens], batch_size, seq_len, seed)
    for _ in range(cut):
        first.next_batch()
    state = json.loads(json.dumps(first.state_dict()))  # as a checkpoint would store it
    resumed = TokenLoader(shards[n_tokens], batch_size, seq_len, seed)
    resumed.load_state_dict(state)
    for (x, y), batch in zip(expected, resumed, strict=False):
        assert torch.equal(x, batch[0]) and torch.equal(y, batch[1])
    assert all(type(v) is int for v in state.values())


def test_errors(shards: dict[int, Path]) -> None:
    with pytest.raises(DataError, match=r"17\.bin has 17 tokens, fewer than one window"):
        TokenLoader(shards[17], 1, 17, seed=0)
    with pytest.raises(DataError, match="batch_size 0"):
        TokenLoader(shards[100], 0, 8, seed=0)
    with pytest.raises(DataError, match="vocab size 50000, expected 8192"):
        TokenLoader(shards[100], 1, 8, seed=0, vocab_size=8192)
    loader = TokenLoader(shards[100], 2, 8, seed=0)  # 12 windows
    for bad in ({"epoch": 0}, {"epoch": 0, "position": 12}, {"epoch": -1, "position": 0}):
        with pytest.raises(DataError, match="loader state"):
            loader.load_state_dict(bad)
    with pytest.raises(DataError, match="must be ints"):
        loader.load_state_dict({"epoch": 0, "position": 1.0})


def test_eval_batches(shards: dict[int, Path]) -> None:
    batches = list(eval_batches(shards[1001], batch_size=4, seq_len=10, max_tokens=95))
    assert [x.shape[0] for x, _ in batches] == [4, 4, 1]  # 9 windows: 90 target tokens <= 95
    assert [w for x, _ in batches for w in _windows(x, 10)] == list(range(9))
    for x, y in batches:
        torch.testing.assert_close(y[:, :-1], x[:, 1:])
    again = list(eval_batches(shards[1001], batch_size=4, seq_len=10, max_tokens=95))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again, strict=True))
    everything = list(eval_batches(shards[1001], batch_size=64, seq_len=10, max_tokens=10**9))
    assert sum(x.numel() for x, _ in everything) == 1000


def test_eval_batches_errors(shards: dict[int, Path]) -> None:
    with pytest.raises(DataError, match="fewer than one window"):
        eval_batches(shards[17], 2, 32, 1000)
    with pytest.raises(DataError, match="max_tokens 5"):
        eval_batches(shards[100], 2, 8, 5)


def test_unigram_entropy(tmp_path: Path) -> None:
    # p = (1/2, 1/4, 1/4): H = 1.5 bits = 1.5 ln 2 nats.
    write_shard(tmp_path / "s.bin", np.array([0, 0, 1, 2] * 25), 8)
    assert unigram_entropy(tmp_path / "s.bin") == pytest.approx(1.5 * math.log(2))
    write_shard(tmp_path / "u.bin", np.arange(256), 256)
    assert unigram_entropy(tmp_path / "u.bin") == pytest.approx(math.log(256))
    write_shard(tmp_path / "c.bin", np.full(10, 3), 8)
    assert unigram_entropy(tmp_path / "c.bin") == 0.0


def test_a_fraction_reads_the_leading_part_only(shards: dict[int, Path]) -> None:
    # 1001 tokens at 0.5: the first 500, so windows 0..48 of seq_len 10 (the last ends on 490).
    half = TokenLoader(shards[1001], batch_size=7, seq_len=10, seed=3, fraction=0.5)
    assert half.n_windows == 49
    read = torch.cat([half.next_batch()[1] for _ in range(30)])  # targets: the last token read
    assert int(read.max()) < 500
    assert sorted(set((read[:, 0] - 1).div(10, rounding_mode="floor").tolist())) == list(range(49))
    full = TokenLoader(shards[1001], batch_size=7, seq_len=10, seed=3)
    assert int(torch.cat([full.next_batch()[1] for _ in range(30)]).max()) >= 500
    assert half.epochs_for(2000) == 2000 / 490


def test_a_spread_fraction_reads_windows_across_the_whole_shard(shards: dict[int, Path]) -> None:
    # 1001 tokens, seq_len 10: 100 windows; half of them drawn across the shard, the same half
    # whatever the training seed, each visited once per epoch.
    halves = [
        TokenLoader(shards[1001], batch_size=10, seq_len=10, seed=s, fraction=0.5, part="spread")
        for s in (3, 4)
    ]
    assert halves[0].n_windows == 50
    seen = []
    for half in halves:
        epoch = torch.cat([half.next_batch()[0] for _ in range(5)])  # 50 windows: one epoch
        windows = _windows(epoch, 10)
        assert len(set(windows)) == 50  # no window twice within an epoch
        for row, window in zip(epoch, windows, strict=True):
            assert row.tolist() == list(range(window * 10, window * 10 + 10))
        seen.append(sorted(windows))
    assert seen[0] == seen[1]  # the part does not depend on the training seed
    assert min(seen[0]) < 25 and max(seen[0]) >= 75  # from both ends of the shard
    assert halves[0].epochs_for(1000) == 1000 / 500
    # The cursor resumes inside the part as it does on the whole shard.
    again = TokenLoader(
        shards[1001], batch_size=10, seq_len=10, seed=3, fraction=0.5, part="spread"
    )
    again.load_state_dict({"epoch": 1, "position": 20})
    halves[0].epoch, halves[0].position = 1, 20
    assert torch.equal(again.next_batch()[0], halves[0].next_batch()[0])


def test_an_unknown_part_or_an_empty_spread_part_is_refused(shards: dict[int, Path]) -> None:
    with pytest.raises(DataError, match=r"part 'random' is unknown; allowed: leading, spread"):
        TokenLoader(shards[100], 2, 8, seed=0, fraction=0.5, part="random")
    with pytest.raises(DataError, match=r"has 12 windows of seq_len 8; a fraction 0.05 of them"):
        TokenLoader(shards[100], 2, 8, seed=0, fraction=0.05, part="spread")


def test_a_fraction_out_of_range_or_too_small_is_refused(shards: dict[int, Path]) -> None:
    for bad in (0.0, 1.5):
        with pytest.raises(DataError, match=r"fraction .* out of range; allowed \(0, 1\]"):
            TokenLoader(shards[100], 2, 8, seed=0, fraction=bad)
    with pytest.raises(DataError, match=r"\(its first 0.05\) has 5 tokens, fewer than one window"):
        TokenLoader(shards[100], 2, 8, seed=0, fraction=0.05)
