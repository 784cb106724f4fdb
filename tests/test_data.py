"""Data sources: the synthetic corpus's floor is exact; local files split and fingerprint."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchbed.workloads.data import (
    DataError,
    MarkovCopySource,
    TextFileSource,
    TokenShardSource,
    read_shard,
    write_shard,
)


def test_markov_floor_matches_monte_carlo_nll_of_the_generating_process():
    src = MarkovCopySource(vocab_size=16, prefix_len=12, branching=3, seed=5)
    seqs = src.sample(40_000, torch.Generator().manual_seed(0))
    nll = src.nll_of_true_model(seqs)
    mc, stderr = float(nll.mean()), float(nll.std() / len(nll) ** 0.5)
    assert abs(mc - src.loss_floor) < 4 * stderr
    assert 0 < src.loss_floor < np.log(16)


def test_markov_floor_hand_computed_for_a_two_state_chain():
    src = MarkovCopySource(vocab_size=2, prefix_len=3, branching=2, seed=0)
    H = src.row_entropies()
    P = src.transition_matrix()
    d0 = np.array([0.5, 0.5])
    expected = (d0 @ H + (d0 @ P) @ H) / 5  # 2 transitions in the prefix, 5 targets
    assert src.loss_floor == pytest.approx(expected, rel=1e-12)


def test_markov_sequences_are_a_prefix_and_its_copy_and_follow_the_chain():
    src = MarkovCopySource(vocab_size=32, prefix_len=8)
    seqs = src.sample(64, torch.Generator().manual_seed(1))
    assert torch.equal(seqs[:, :8], seqs[:, 8:])
    P = torch.from_numpy(src.transition_matrix())
    assert bool((P[seqs[:, :7], seqs[:, 1:8]] > 0).all())


def test_markov_validation_set_is_fixed_and_training_stream_is_seeded():
    src = MarkovCopySource(vocab_size=32, prefix_len=8)
    a = src.val_batches(4, 15, 10)
    b = src.val_batches(4, 15, 10)
    assert all(torch.equal(x[0], y[0]) for x, y in zip(a, b, strict=True))
    s0 = next(src.train_batches(4, 15, seed=0))[0]
    assert torch.equal(s0, next(src.train_batches(4, 15, seed=0))[0])
    assert not torch.equal(s0, next(src.train_batches(4, 15, seed=1))[0])
    inputs, targets = next(src.train_batches(4, 15, seed=0))
    assert torch.equal(inputs[:, 1:], targets[:, :-1])


def test_shard_round_trip_and_header_errors(tmp_path):
    tokens = np.arange(1000) % 500
    path = tmp_path / "train_000.bin"
    write_shard(str(path), tokens)
    assert np.array_equal(read_shard(str(path)), tokens)
    raw = bytearray(path.read_bytes())
    raw[0:4] = np.int32(123).tobytes()
    bad = tmp_path / "bad.bin"
    bad.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"bad.bin: header: magic is 123, expected 20240520"):
        read_shard(str(bad))
    short = tmp_path / "short.bin"
    short.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataError, match="token count says 1000, file holds 995"):
        read_shard(str(short))


def test_shards_use_val_files_for_validation_and_check_vocab(tmp_path):
    write_shard(str(tmp_path / "d_train_000.bin"), np.arange(5000) % 100)
    write_shard(str(tmp_path / "d_val_000.bin"), np.arange(600) % 100)
    src = TokenShardSource(str(tmp_path / "d_*.bin"), vocab_size=128)
    assert len(src.train) == 5000 and len(src.val) == 600
    (vx, vy), *_ = src.val_batches(4, 31, 8)
    assert vx.shape == (4, 31) and torch.equal(vx[:, 1:], vy[:, :-1])
    with pytest.raises(DataError, match="token id 99 is outside the model's vocabulary of 64"):
        TokenShardSource(str(tmp_path / "d_*.bin"), vocab_size=64)


def test_text_source_is_bytes_with_a_fixed_split(tmp_path):
    (tmp_path / "a.txt").write_text("hello world " * 200)
    src = TextFileSource(str(tmp_path / "a.txt"))
    assert src.vocab_size == 256
    assert len(src.val) == 240 and len(src.train) == 2160
    x, y = next(src.train_batches(2, 16, seed=0))
    assert x.max() < 256 and torch.equal(x[:, 1:], y[:, :-1])
    assert src.fingerprint() == TextFileSource(str(tmp_path / "a.txt")).fingerprint()
    with pytest.raises(DataError, match="matches no file; no text file to read"):
        TextFileSource(str(tmp_path / "missing*.txt"))
