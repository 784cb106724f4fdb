"""A synthetic preference task: prompts and responses from a sparse Markov chain, ranked by a hidden
scoring rule (the "human" whose preferences a reward model learns).

* Sequences are ``prompt_len + response_len`` tokens of one seeded Markov chain (the chain of
  `MarkovCopySource`, without the copy): the reference policy is pretrained on them, so it
  samples responses the way the chain does.
* The true reward of a response is the fraction of its tokens in a hidden "good" half of the
  vocabulary (a random half, fixed by the task's seed). The chain, and so the reference policy,
  earns about 0.5; a policy that keeps to the chain's paths through the good half earns close to 1
  (with 4 successors per state, almost every state has a good one).
* Ranked pairs: two responses to one prompt sampled from the chain, the one with the higher true
  reward preferred (pairs with equal rewards are not asked about). The labels are exact, so a
  reward model's held-out pair accuracy is its only error.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import torch

from benchbed.workloads.data.base import DataSource
from benchbed.workloads.data.markov import MarkovCopySource


@dataclass
class PreferenceTask:
    vocab_size: int = 16
    prompt_len: int = 8
    response_len: int = 16
    branching: int = 4
    seed: int = 7  # fixes the chain
    chain: MarkovCopySource = field(init=False, repr=False)
    good: torch.Tensor = field(init=False, repr=False)  # [V] bool: the hidden good half

    def __post_init__(self) -> None:
        if self.vocab_size % 2:
            raise ValueError("preference task: vocab_size must be even (two halves)")
        self.chain = MarkovCopySource(
            vocab_size=self.vocab_size, prefix_len=self.length + 1, branching=self.branching, seed=self.seed
        )
        order = torch.randperm(self.vocab_size, generator=torch.Generator().manual_seed(self.seed + 1))
        self.good = torch.zeros(self.vocab_size, dtype=torch.bool)
        self.good[order[: self.vocab_size // 2]] = True

    @property
    def length(self) -> int:
        return self.prompt_len + self.response_len

    def sample(self, n: int, generator: torch.Generator, length: int | None = None) -> torch.Tensor:
        """n chain sequences of `length` (default prompt + response) tokens, [n, length]."""
        length = length or self.length
        if length > self.chain.prefix_len:
            raise ValueError(f"preference task: sequences are at most {self.chain.prefix_len} tokens")
        return self.chain.sample(n, generator)[:, :length]

    def continue_chain(self, prompts: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Responses to `prompts` sampled from the chain itself, [n, response_len]."""
        n = prompts.shape[0]
        out = torch.empty(n, self.response_len, dtype=torch.long)
        prev = prompts[:, -1]
        u = torch.rand(n, self.response_len, generator=generator, dtype=torch.float64)
        for t in range(self.response_len):
            choice = (u[:, t, None] > self.chain._cum_t[prev]).sum(dim=1)
            prev = self.chain._succ_t[prev, choice]
            out[:, t] = prev
        return out

    def true_reward(self, prompts: torch.Tensor, responses: torch.Tensor) -> torch.Tensor:
        """The hidden rule: the fraction of response tokens in the good half, [n] (the prompt sets
        where the response starts on the chain)."""
        return self.good.to(responses.device)[responses].float().mean(dim=1)

    def ranked_pairs(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """n ranked pairs, [n, 2, prompt + response] (chosen first), rewards never tied."""
        chosen, rejected = [], []
        have = 0
        while have < n:
            m = 2 * (n - have) + 16
            prompts = self.sample(m, generator, self.prompt_len)
            a = self.continue_chain(prompts, generator)
            b = self.continue_chain(prompts, generator)
            ra, rb = self.true_reward(prompts, a), self.true_reward(prompts, b)
            keep = ra != rb
            a_wins = (ra > rb)[keep]
            p, a, b = prompts[keep], a[keep], b[keep]
            win = torch.where(a_wins[:, None], a, b)
            lose = torch.where(a_wins[:, None], b, a)
            chosen.append(torch.cat([p, win], 1))
            rejected.append(torch.cat([p, lose], 1))
            have += int(keep.sum())
        pairs = torch.stack([torch.cat(chosen)[:n], torch.cat(rejected)[:n]], dim=1)
        return pairs

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        h.update(f"preference:{self.vocab_size}:{self.prompt_len}:{self.response_len}:{self.seed}".encode())
        h.update(self.good.numpy().tobytes())
        h.update(self.chain.fingerprint().encode())
        return h.hexdigest()[:16]


class ChainSource(DataSource):
    """The reference policy's pretraining corpus: chain sequences of prompt + response + 1 tokens
    (inputs and next-token targets of prompt + response tokens each)."""

    def __init__(self, task: PreferenceTask):
        self.task = task
        self.vocab_size = task.vocab_size
        chain, T = task.chain, task.length
        H = chain.row_entropies()
        dist, total = np.full(task.vocab_size, 1.0 / task.vocab_size), 0.0
        for _ in range(T):
            total += float(dist @ H)
            dist = chain.step_distribution(dist)
        self.loss_floor = total / T

    def _pairs(self, seqs: torch.Tensor):
        return seqs[:, :-1].contiguous(), seqs[:, 1:].contiguous()

    def train_batches(self, batch_size, seq_len, seed):
        g = torch.Generator().manual_seed(int(seed) * 1_000_003 + 29)
        while True:
            yield self._pairs(self.task.chain.sample(batch_size, g)[:, : seq_len + 1])

    def val_batches(self, batch_size, seq_len, n_sequences):
        g = torch.Generator().manual_seed(self.task.chain.val_seed)
        seqs = self.task.chain.sample(n_sequences, g)[:, : seq_len + 1]
        return [self._pairs(b) for b in seqs.split(batch_size)]

    def fingerprint(self) -> str:
        return self.task.fingerprint()

    def describe(self) -> str:
        return f"Markov chain sequences (V={self.vocab_size}, T={self.task.length}, floor {self.loss_floor:.4f} nats)"


class PairSource(DataSource):
    """Ranked pairs for the reward model: batches of ([B, 2, L] chosen-first pairs, [B] ones)."""

    def __init__(self, task: PreferenceTask, val_seed: int = 31_337):
        self.task, self.vocab_size, self.val_seed = task, task.vocab_size, val_seed

    def train_batches(self, batch_size, seq_len, seed):
        g = torch.Generator().manual_seed(int(seed) * 1_000_003 + 101)
        while True:
            pairs = self.task.ranked_pairs(batch_size, g)
            yield pairs, torch.ones(batch_size)

    def val_batches(self, batch_size, seq_len, n_sequences):
        pairs = self.task.ranked_pairs(n_sequences, torch.Generator().manual_seed(self.val_seed))
        return [(p, torch.ones(p.shape[0])) for p in pairs.split(batch_size)]

    def fingerprint(self) -> str:
        return self.task.fingerprint() + "-pairs"


class PromptSource(DataSource):
    """Prompts for the policy: batches of ([B, prompt_len] prompts, [B] zeros)."""

    def __init__(self, task: PreferenceTask, val_seed: int = 27_182):
        self.task, self.vocab_size, self.val_seed = task, task.vocab_size, val_seed

    def train_batches(self, batch_size, seq_len, seed):
        g = torch.Generator().manual_seed(int(seed) * 1_000_003 + 202)
        while True:
            yield self.task.sample(batch_size, g, self.task.prompt_len), torch.zeros(batch_size)

    def val_batches(self, batch_size, seq_len, n_sequences):
        prompts = self.task.sample(
            n_sequences, torch.Generator().manual_seed(self.val_seed), self.task.prompt_len
        )
        return [(p, torch.zeros(p.shape[0])) for p in prompts.split(batch_size)]

    def fingerprint(self) -> str:
        return self.task.fingerprint() + "-prompts"
