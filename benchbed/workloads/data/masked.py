"""Masked-language-model batches from the synthetic Markov+copy corpus, with their exact loss floor.

Masking is BERT's (Devlin et al. 2019): each position is selected independently with probability
``ratio``; a selected position's input becomes [MASK] with probability 0.8, a token drawn uniformly
from the vocabulary with probability 0.1 (it may draw the original), and stays the original with
probability 0.1. Targets are the original tokens at the selected positions and IGNORE_INDEX
elsewhere. [MASK] is one extra input id, ``vocab_size`` of the underlying corpus.

The floor. A sequence is a Markov prefix x_0..x_{m-1} and its copy, so every hidden token x_t is
seen twice, at positions t and t + m, each through the masking channel

    P(o | x) = (1 - r) [o = x] + r (0.8 [o = MASK] + 0.1 / V + 0.1 [o = x]),

independently. That is a hidden Markov model with two observations per state, so the posterior of
every token given the whole corrupted sequence is exact by forward-backward. The loss is scored only
at selected positions, so the best predictor at a position s conditions on s being selected: its own
observation enters through P(o | x, selected) = 0.8 [o = MASK] + 0.1 / V + 0.1 [o = x] instead. The
floor is the mean of -log posterior(true token) over the selected positions of the validation set:
the loss of the generating process's own posterior on exactly the data the target is measured on
(on its first ``floor_sequences`` sequences where the vocabulary makes the whole set slow).
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field

import torch

from benchbed.workloads.batch import IGNORE_INDEX
from benchbed.workloads.data.base import DataError, DataSource
from benchbed.workloads.data.markov import MarkovCopySource


@dataclass(frozen=True)
class MaskingRule:
    """BERT's replacement rule for the selected positions."""

    ratio: float = 0.15  # probability that a position is selected (carries loss)
    mask_frac: float = 0.8  # of the selected: replaced by [MASK]
    random_frac: float = 0.1  # of the selected: replaced by a uniform random token; the rest unchanged

    def check(self) -> None:
        if not 0.0 < self.ratio < 1.0:
            raise ValueError(f"ratio: must be in (0, 1), got {self.ratio}")
        if self.mask_frac < 0 or self.random_frac < 0 or self.mask_frac + self.random_frac > 1.0:
            raise ValueError(
                f"mask_frac + random_frac must be <= 1 and each >= 0, got {self.mask_frac} + {self.random_frac}"
            )


def mask_tokens(
    tokens: torch.Tensor, rule: MaskingRule, vocab_size: int, mask_id: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) from original tokens [B, T] by `rule`; `generator` lives on tokens' device."""
    shape, device = tokens.shape, tokens.device
    selected = torch.rand(shape, generator=generator, device=device) < rule.ratio
    how = torch.rand(shape, generator=generator, device=device)
    random_tokens = torch.randint(vocab_size, shape, generator=generator, device=device)
    inputs = torch.where(selected & (how < rule.mask_frac), torch.full_like(tokens, mask_id), tokens)
    to_random = selected & (how >= rule.mask_frac) & (how < rule.mask_frac + rule.random_frac)
    inputs = torch.where(to_random, random_tokens, inputs)
    targets = tokens.masked_fill(~selected, IGNORE_INDEX)
    return inputs, targets


def original_tokens(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The uncorrupted tokens of a masked batch: the targets where there are targets, else the inputs."""
    return torch.where(targets != IGNORE_INDEX, targets, inputs)


@dataclass
class MaskedMarkovSource(DataSource):
    """BERT-masked sequences of a `MarkovCopySource` (2m tokens each, no shift: a bidirectional
    model predicts the masked tokens in place)."""

    base: MarkovCopySource
    rule: MaskingRule = MaskingRule()
    val_sequences: int = 256  # the validation set the floor is computed on
    # the first this many validation sequences carry the floor (None: all); forward-backward costs
    # O(n * m * V * branching), tens of seconds per 8 sequences at V = 30522
    floor_sequences: int | None = None
    vocab_size: int = field(init=False)
    mask_id: int = field(init=False)

    def __post_init__(self) -> None:
        try:
            self.rule.check()
        except ValueError as exc:
            raise DataError(f"masked source: {exc}") from None
        self.mask_id = self.base.vocab_size
        self.vocab_size = self.base.vocab_size + 1  # input ids: the corpus plus [MASK]

    @property
    def seq_len(self) -> int:
        return 2 * self.base.prefix_len

    def _check_seq_len(self, seq_len: int) -> None:
        if seq_len != self.seq_len:
            raise DataError(
                f"masked source: sequence length must be 2 * prefix_len = {self.seq_len}, got {seq_len}"
            )

    def _mask(self, seqs: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return mask_tokens(seqs, self.rule, self.base.vocab_size, self.mask_id, g)

    def train_batches(self, batch_size, seq_len, seed):
        self._check_seq_len(seq_len)
        g = torch.Generator().manual_seed(int(seed) * 1_000_003 + 29)
        while True:
            yield self._mask(self.base.sample(batch_size, g), g)

    def _val(self, n_sequences: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(self.base.val_seed)
        return self._mask(self.base.sample(n_sequences, g), g)

    def val_batches(self, batch_size, seq_len, n_sequences):
        self._check_seq_len(seq_len)
        inputs, targets = self._val(n_sequences)
        return list(zip(inputs.split(batch_size), targets.split(batch_size), strict=True))

    @functools.cached_property
    def loss_floor(self) -> float:  # type: ignore[override]
        """Mean posterior NLL of the true tokens at the selected positions of the validation set (of
        its first `floor_sequences` sequences when that is set)."""
        inputs, targets = self._val(self.val_sequences)
        if self.floor_sequences is not None:
            inputs, targets = inputs[: self.floor_sequences], targets[: self.floor_sequences]
        nll = posterior_nll(self.base, self.rule, inputs, targets)
        selected = targets != IGNORE_INDEX
        return float(nll[selected].mean())

    def fingerprint(self) -> str:
        r = self.rule
        h = hashlib.sha256(self.base.fingerprint().encode())
        h.update(f"mlm:{r.ratio}:{r.mask_frac}:{r.random_frac}".encode())
        return h.hexdigest()[:16]

    def describe(self) -> str:
        b = self.base
        return (
            f"synthetic Markov+copy (V={b.vocab_size}, prefix {b.prefix_len}), BERT-masked at "
            f"{self.rule.ratio:.0%} (80/10/10)"
        )


def _channel(obs: torch.Tensor, x: torch.Tensor, V: int, rule: MaskingRule, selected: bool) -> torch.Tensor:
    """P(o | x) for observations `obs` and hidden values `x` of the same shape (float64); the
    [MASK] id is V. Given selection: 0.8 [o = MASK] + 0.1 / V + 0.1 [o = x]."""
    same = (obs == x).double()
    is_mask = (obs == V).double()
    given_selected = (
        rule.mask_frac * is_mask + rule.random_frac / V + (1.0 - rule.mask_frac - rule.random_frac) * same
    )
    if selected:
        return given_selected
    return (1.0 - rule.ratio) * same + rule.ratio * given_selected


class _Emission:
    """P(o_a | x) P(o_b | x) for every x of one hidden position of N sequences, kept as a constant
    plus its values at the (at most two) observed ids: the channel is flat except at o = x."""

    def __init__(self, o_a, o_b, V: int, rule: MaskingRule, a_selected: bool = False):
        N = o_a.shape[0]
        far = torch.full((N,), -1, dtype=torch.long)  # a hidden value no observation equals
        self.const = _channel(o_a, far, V, rule, a_selected) * _channel(o_b, far, V, rule, False)
        self.at = torch.stack([o_a, o_b], dim=1).clamp(max=V - 1)  # [MASK] points anywhere: exact below
        self.value = _channel(o_a.unsqueeze(1), self.at, V, rule, a_selected) * _channel(
            o_b.unsqueeze(1), self.at, V, rule, False
        )

    def times(self, v: torch.Tensor) -> torch.Tensor:
        """v [N, V] multiplied by the emission."""
        return (v * self.const.unsqueeze(1)).scatter(1, self.at, v.gather(1, self.at) * self.value)


def posterior_nll(
    source: MarkovCopySource, rule: MaskingRule, inputs: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """-log P(x_s | all observations, s selected) for every position s of every sequence, [N, 2m]
    (float64), by forward-backward over the hidden prefix. Positions without a target get NaN.
    Sequences go in chunks that keep the stored forward messages [n, m, V] near 400 MB."""
    chunk = max(1, int(4e8 // (8 * source.prefix_len * source.vocab_size)))
    return torch.cat(
        [
            _posterior_nll(source, rule, i, t)
            for i, t in zip(inputs.split(chunk), targets.split(chunk), strict=True)
        ]
    )


def _posterior_nll(
    source: MarkovCopySource, rule: MaskingRule, inputs: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    V, m = source.vocab_size, source.prefix_len
    N = inputs.shape[0]
    succ, probs = source._succ_t, torch.from_numpy(source.probs)  # [V, k], [V, k]
    truth = original_tokens(inputs, targets)
    if not torch.equal(truth[:, :m], truth[:, m:]):
        raise DataError("masked source: the sequences are not prefix + copy")

    def forward_step(a: torch.Tensor) -> torch.Tensor:  # (a P)[j] = sum_i a[i] P[i, j]
        out = torch.zeros_like(a)
        return out.index_add_(1, succ.reshape(-1), (a.unsqueeze(-1) * probs).reshape(N, -1))

    def backward_step(b: torch.Tensor) -> torch.Tensor:  # (P b)[i] = sum_k P[i, succ_ik] b[succ_ik]
        return (b[:, succ] * probs).sum(-1)

    first, second = inputs[:, :m], inputs[:, m:]
    emit = [_Emission(first[:, t], second[:, t], V, rule) for t in range(m)]
    # prior[t] = P(x_t | observations of x_<t), before the emission at t (normalised)
    prior = torch.empty(N, m, V, dtype=torch.float64)
    p = torch.full((N, V), 1.0 / V, dtype=torch.float64)
    for t in range(m):
        prior[:, t] = p
        if t + 1 < m:
            a = emit[t].times(p)
            p = forward_step(a / a.sum(-1, keepdim=True))
    # backward: b = P(observations of x_>t | x_t) (scaled); the posterior of x_t for a target at
    # position t (or t + m) uses that position's channel given selection
    nll = torch.full(inputs.shape, float("nan"), dtype=torch.float64)
    b = torch.ones(N, V, dtype=torch.float64)
    rows = torch.arange(N)
    for t in range(m - 1, -1, -1):
        prior_beta = prior[:, t] * b
        x_true = truth[:, t]
        for own, other, col in ((first, second, t), (second, first, t + m)):
            own_emit = _Emission(own[:, t], other[:, t], V, rule, a_selected=True)
            post = own_emit.times(prior_beta)
            p_true = post[rows, x_true] / post.sum(-1)
            nll[:, col] = torch.where(targets[:, col] != IGNORE_INDEX, -torch.log(p_true), nll[:, col])
        b = backward_step(emit[t].times(b))
        b = b / b.sum(-1, keepdim=True)
    return nll
