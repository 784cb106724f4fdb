"""A seeded synthetic corpus with an exactly computable loss floor.

Each sequence is a prefix drawn from a sparse random Markov chain followed by a verbatim copy of
that prefix. Predicting the prefix needs bigram statistics (the floor there is the chain's
conditional entropy); predicting the copy needs attention to the first half (the floor there is
zero).
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field

import numpy as np
import torch

from benchbed.workloads.data.base import DataError, DataSource


@dataclass
class MarkovCopySource(DataSource):
    vocab_size: int
    prefix_len: int  # m: a sequence is 2m tokens; inputs/targets are 2m - 1 long
    branching: int = 4  # successors per state
    concentration: float = 1.0  # Dirichlet concentration of each row's probabilities
    seed: int = 1234  # fixes the chain itself (the same for every cell of a workload)
    val_seed: int = 999_983
    # re-draws the successors' probabilities from this seed, keeping `seed`'s successors: a shifted
    # task with the same grammar (which token may follow which) and new preferences (fine-tuning)
    prob_seed: int | None = None
    successors: np.ndarray = field(init=False, repr=False)
    probs: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not 2 <= self.branching <= self.vocab_size:
            raise DataError(f"markov source: branching must be in [2, vocab_size], got {self.branching}")
        rng = np.random.default_rng(self.seed)
        V, k = self.vocab_size, self.branching
        self.successors = np.stack([rng.choice(V, size=k, replace=False) for _ in range(V)])
        self.probs = rng.dirichlet(np.full(k, self.concentration), size=V)
        if self.prob_seed is not None:
            self.probs = np.random.default_rng(self.prob_seed).dirichlet(
                np.full(k, self.concentration), size=V
            )
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
