"""Training data, generated or read from local files -- never downloaded.

Three sources share one small interface (`DataSource`):

* `MarkovCopySource`: a seeded synthetic corpus with an exactly computable loss floor. Each sequence
  is a prefix drawn from a sparse random Markov chain followed by a verbatim copy of that prefix.
  Predicting the prefix needs bigram statistics (the floor there is the chain's conditional
  entropy); predicting the copy needs attention to the first half (the floor there is zero).
* `TextFileSource`: local text files, byte-level (vocabulary 256).
* `TokenShardSource`: token shards in the llm.c / modded-nanogpt ``.bin`` format: a 256-int32
  header (magic 20240520, version 1, token count), then uint16 tokens.

Every source has a fixed train/validation split and a fingerprint recorded with the results.
"""

from __future__ import annotations

import functools
import glob
import hashlib
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

SHARD_MAGIC = 20240520
SHARD_VERSION = 1
SHARD_HEADER_INT32 = 256


class DataError(ValueError):
    """Bad data input; the message names the file."""


class DataSource:
    vocab_size: int
    loss_floor: float | None = None  # nats per target token, where it is known exactly

    def train_batches(
        self, batch_size: int, seq_len: int, seed: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        raise NotImplementedError

    def val_batches(
        self, batch_size: int, seq_len: int, n_sequences: int
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        raise NotImplementedError

    def fingerprint(self) -> str:
        raise NotImplementedError

    def describe(self) -> str:
        return type(self).__name__


# --------------------------------------------------------------------------------------------
# synthetic: sparse Markov prefix + verbatim copy


@dataclass
class MarkovCopySource(DataSource):
    vocab_size: int
    prefix_len: int  # m: a sequence is 2m tokens; inputs/targets are 2m - 1 long
    branching: int = 4  # successors per state
    concentration: float = 1.0  # Dirichlet concentration of each row's probabilities
    seed: int = 1234  # fixes the chain itself (the same for every cell of a workload)
    val_seed: int = 999_983
    successors: np.ndarray = field(init=False, repr=False)
    probs: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not 2 <= self.branching <= self.vocab_size:
            raise DataError(f"markov source: branching must be in [2, vocab_size], got {self.branching}")
        rng = np.random.default_rng(self.seed)
        V, k = self.vocab_size, self.branching
        self.successors = np.stack([rng.choice(V, size=k, replace=False) for _ in range(V)])
        self.probs = rng.dirichlet(np.full(k, self.concentration), size=V)
        self._succ_t = torch.from_numpy(self.successors).long()
        self._cum_t = torch.from_numpy(np.cumsum(self.probs, axis=1)).double()
        self._cum_t[:, -1] = 1.0 + 1e-9  # guard against float round-off at the top of each row

    @property
    def seq_len(self) -> int:
        return 2 * self.prefix_len - 1

    def row_entropies(self) -> np.ndarray:
        """H(next | current = i) in nats, for every state i."""
        p = self.probs
        return -(p * np.log(np.where(p > 0, p, 1.0))).sum(axis=1)

    def transition_matrix(self) -> np.ndarray:
        """Dense V x V transition matrix (for small vocabularies and tests)."""
        P = np.zeros((self.vocab_size, self.vocab_size))
        np.put_along_axis(P, self.successors, self.probs, axis=1)
        return P

    def step_distribution(self, dist: np.ndarray) -> np.ndarray:
        """dist @ P without forming P (the chain is sparse: `branching` successors per state)."""
        return np.bincount(
            self.successors.ravel(), weights=(dist[:, None] * self.probs).ravel(), minlength=self.vocab_size
        )

    def entropy_rate(self) -> float:
        """Entropy rate of the chain under its stationary distribution (power iteration)."""
        pi = np.full(self.vocab_size, 1.0 / self.vocab_size)
        for _ in range(10_000):
            nxt = 0.5 * (
                pi + self.step_distribution(pi)
            )  # lazy chain: same stationary law, converges if periodic
            if np.abs(nxt - pi).max() < 1e-13:
                break
            pi = nxt
        return float(pi @ self.row_entropies())

    @functools.cached_property
    def loss_floor(self) -> float:  # type: ignore[override]
        """Expected cross-entropy of the true generating process per target token, exactly.

        The first token is uniform; the state distribution is propagated through the chain, so
        the floor is exact for the generating process without assuming stationarity. Targets
        1..m-1 carry the chain's conditional entropy; the m copy targets carry none."""
        m = self.prefix_len
        H = self.row_entropies()
        dist = np.full(self.vocab_size, 1.0 / self.vocab_size)
        total = 0.0
        for _ in range(m - 1):
            total += float(dist @ H)
            dist = self.step_distribution(dist)
        return total / self.seq_len

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """n sequences of 2m tokens, int64 [n, 2m]."""
        m = self.prefix_len
        x = torch.empty(n, m, dtype=torch.long)
        x[:, 0] = torch.randint(self.vocab_size, (n,), generator=generator)
        u = torch.rand(n, m, generator=generator, dtype=torch.float64)
        for t in range(1, m):
            prev = x[:, t - 1]
            choice = (u[:, t, None] > self._cum_t[prev]).sum(dim=1)
            x[:, t] = self._succ_t[prev, choice]
        return torch.cat([x, x], dim=1)

    def _check_seq_len(self, seq_len: int) -> None:
        if seq_len != self.seq_len:
            raise DataError(
                f"markov source: sequence length must be 2 * prefix_len - 1 = {self.seq_len}, got {seq_len}"
            )

    def train_batches(self, batch_size, seq_len, seed):
        self._check_seq_len(seq_len)
        g = torch.Generator().manual_seed(int(seed) * 1_000_003 + 17)
        while True:
            seqs = self.sample(batch_size, g)
            yield seqs[:, :-1].contiguous(), seqs[:, 1:].contiguous()

    def val_batches(self, batch_size, seq_len, n_sequences):
        self._check_seq_len(seq_len)
        g = torch.Generator().manual_seed(self.val_seed)
        seqs = self.sample(n_sequences, g)
        return [(b[:, :-1].contiguous(), b[:, 1:].contiguous()) for b in seqs.split(batch_size)]

    def nll_of_true_model(self, seqs: torch.Tensor) -> torch.Tensor:
        """Per-sequence mean NLL of the generating process itself (used to check the floor)."""
        m = self.prefix_len
        prev, nxt = seqs[:, : m - 1], seqs[:, 1:m]
        succ, probs = self._succ_t[prev], torch.from_numpy(self.probs)[prev]  # [n, m-1, k]
        p = (probs * (succ == nxt[..., None])).sum(-1)
        nll_prefix = -torch.log(p).sum(dim=1)
        return nll_prefix / self.seq_len

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        h.update(
            f"markov-copy:{self.vocab_size}:{self.prefix_len}:{self.branching}:{self.concentration}".encode()
        )
        h.update(self.successors.tobytes())
        h.update(self.probs.tobytes())
        return h.hexdigest()[:16]

    def describe(self) -> str:
        return (
            f"synthetic Markov+copy (V={self.vocab_size}, prefix {self.prefix_len}, "
            f"{self.branching} successors/state, floor {self.loss_floor:.4f} nats)"
        )


# --------------------------------------------------------------------------------------------
# local files: byte-level text and llm.c token shards


class _TokenArraySource(DataSource):
    """A 1-D token array split once: the last `val_fraction` is validation."""

    val_fraction = 0.1

    def __init__(self, train: np.ndarray, val: np.ndarray, vocab_size: int, fingerprint: str, label: str):
        self.train, self.val = train, val
        self.vocab_size = vocab_size
        self._fingerprint, self._label = fingerprint, label

    def _need(self, tokens: np.ndarray, seq_len: int, what: str) -> None:
        if len(tokens) < seq_len + 2:
            raise DataError(
                f"{self._label}: {what} split has {len(tokens)} tokens, fewer than one sequence of {seq_len + 1}"
            )

    def train_batches(self, batch_size, seq_len, seed):
        self._need(self.train, seq_len, "train")
        g = torch.Generator().manual_seed(int(seed) * 1_000_003 + 17)
        data = self.train
        span = torch.arange(seq_len + 1)
        while True:
            starts = torch.randint(len(data) - seq_len - 1, (batch_size,), generator=g)
            idx = (starts[:, None] + span).numpy()
            seqs = torch.from_numpy(data[idx].astype(np.int64))
            yield seqs[:, :-1].contiguous(), seqs[:, 1:].contiguous()

    def val_batches(self, batch_size, seq_len, n_sequences):
        self._need(self.val, seq_len, "validation")
        n = min(n_sequences, (len(self.val) - 1) // seq_len)
        seqs = [self.val[i * seq_len : i * seq_len + seq_len + 1].astype(np.int64) for i in range(n)]
        t = torch.from_numpy(np.stack(seqs))
        return [(b[:, :-1].contiguous(), b[:, 1:].contiguous()) for b in t.split(batch_size)]

    def fingerprint(self) -> str:
        return self._fingerprint

    def describe(self) -> str:
        return f"{self._label} ({len(self.train)} train / {len(self.val)} validation tokens)"


def _split(tokens: np.ndarray, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    n_val = max(1, int(math.ceil(len(tokens) * val_fraction)))
    return tokens[:-n_val], tokens[-n_val:]


def _files(pattern: str, what: str) -> list[str]:
    paths = sorted(glob.glob(pattern)) if any(c in pattern for c in "*?[") else [pattern]
    paths = [p for p in paths if os.path.isfile(p)]
    if not paths:
        raise DataError(f"{pattern}: no {what} file found")
    return paths


class TextFileSource(_TokenArraySource):
    """Local text files read as bytes (vocabulary 256): no tokenizer to download."""

    def __init__(self, pattern: str, val_fraction: float = 0.1):
        paths = _files(pattern, "text")
        h = hashlib.sha256()
        chunks = []
        for p in paths:
            with open(p, "rb") as f:
                raw = f.read()
            h.update(raw)
            chunks.append(np.frombuffer(raw, dtype=np.uint8))
        tokens = np.concatenate(chunks)
        train, val = _split(tokens, val_fraction)
        super().__init__(train, val, 256, h.hexdigest()[:16], f"text {pattern}")


def read_shard(path: str) -> np.ndarray:
    """Tokens of one llm.c `.bin` shard, validated against its header."""
    with open(path, "rb") as f:
        header = np.frombuffer(f.read(SHARD_HEADER_INT32 * 4), dtype=np.int32)
        if len(header) < SHARD_HEADER_INT32:
            raise DataError(f"{path}: header: file shorter than the 1024-byte header")
        if header[0] != SHARD_MAGIC:
            raise DataError(f"{path}: header: magic is {header[0]}, expected {SHARD_MAGIC}")
        if header[1] != SHARD_VERSION:
            raise DataError(f"{path}: header: version is {header[1]}, expected {SHARD_VERSION}")
        count = int(header[2])
        tokens = np.frombuffer(f.read(), dtype=np.uint16)
    if len(tokens) != count:
        raise DataError(f"{path}: header: token count says {count}, file holds {len(tokens)}")
    return tokens


def write_shard(path: str, tokens: np.ndarray) -> None:
    """Write tokens as an llm.c `.bin` shard (used by tests and by users preparing data)."""
    tokens = np.asarray(tokens)
    if tokens.size and (tokens.min() < 0 or tokens.max() >= 2**16):
        raise DataError(f"{path}: tokens must fit in uint16")
    header = np.zeros(SHARD_HEADER_INT32, dtype=np.int32)
    header[:3] = (SHARD_MAGIC, SHARD_VERSION, len(tokens))
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(tokens.astype(np.uint16).tobytes())


class TokenShardSource(_TokenArraySource):
    """llm.c / modded-nanogpt shards. Files whose name contains 'val' are the validation split;
    without any, the last 10% of the tokens are."""

    def __init__(self, pattern: str, vocab_size: int, val_fraction: float = 0.1):
        paths = _files(pattern, ".bin shard")
        val_paths = [p for p in paths if "val" in os.path.basename(p)]
        train_paths = [p for p in paths if p not in val_paths]
        h = hashlib.sha256()
        parts = {}
        for p in paths:
            parts[p] = read_shard(p)
            h.update(parts[p].tobytes())
        if val_paths and train_paths:
            train = np.concatenate([parts[p] for p in train_paths])
            val = np.concatenate([parts[p] for p in val_paths])
        else:
            train, val = _split(np.concatenate([parts[p] for p in paths]), val_fraction)
        top = int(max(train.max(initial=0), val.max(initial=0)))
        if top >= vocab_size:
            raise DataError(f"{pattern}: token id {top} is outside the model's vocabulary of {vocab_size}")
        super().__init__(train, val, vocab_size, h.hexdigest()[:16], f"shards {pattern}")
