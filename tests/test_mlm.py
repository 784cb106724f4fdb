"""Masked-language modelling: BERT's masking rule, the exact floor of the masked Markov+copy source,
the masking-ratio technique, and token dropping that really removes tokens from the middle blocks
(Hou et al. in the encoder, random-LTD in the GPT)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from benchbed.models.encoder import Encoder, EncoderConfig
from benchbed.models.gpt import GPT, GPTConfig
from benchbed.techniques import REGISTRY, TechniqueError, build_config
from benchbed.techniques.data.random_ltd import kept_tokens
from benchbed.worker.assemble import build_context, run_settings
from benchbed.workloads import IGNORE_INDEX, WORKLOADS, Batch
from benchbed.workloads.data.markov import MarkovCopySource
from benchbed.workloads.data.masked import (
    MaskedMarkovSource,
    MaskingRule,
    mask_tokens,
    original_tokens,
    posterior_nll,
)


def make(name: str, options: dict | None = None):
    cls = REGISTRY[name]
    return cls(build_config(cls, options or {}, f"techniques.{name}"))


def context(workload: str, names: list[str], options: dict | None = None):
    options = options or {}
    w = WORKLOADS[workload]
    techniques = [make(n, options.get(n)) for n in [*names, "adamw"]]
    run = run_settings(w, torch.device("cpu"), budget_tokens=None, budget_steps=10)
    view = {"device": "cpu", "techniques": [*names, "adamw"], "workload": workload, "world_size": 1}
    return build_context(w, techniques, run, view)


# -- BERT's masking rule -------------------------------------------------------------------------------
def test_mlm_masking_follows_80_10_10_within_tolerance_on_many_draws():
    V, mask_id, n = 50, 50, 400_000
    tokens = torch.randint(V, (n // 100, 100), generator=torch.Generator().manual_seed(0))
    rule = MaskingRule(ratio=0.2)
    inputs, targets = mask_tokens(tokens, rule, V, mask_id, torch.Generator().manual_seed(1))
    selected = targets != IGNORE_INDEX

    def close(observed: float, p: float, count: int) -> bool:  # within 5 binomial standard errors
        return abs(observed - p) <= 5 * math.sqrt(p * (1 - p) / count)

    assert close(float(selected.float().mean()), 0.2, n)
    k = int(selected.sum())
    picked_in, picked_orig = inputs[selected], tokens[selected]
    frac_mask = float((picked_in == mask_id).float().mean())
    frac_changed = float(((picked_in != mask_id) & (picked_in != picked_orig)).float().mean())
    frac_same = float((picked_in == picked_orig).float().mean())
    # a random replacement draws the original with probability 1/V
    assert close(frac_mask, 0.8, k)
    assert close(frac_changed, 0.1 * (1 - 1 / V), k)
    assert close(frac_same, 0.1 + 0.1 / V, k)
    # the random replacements are uniform over the corpus's ids, [MASK] never among them: with
    # every selected position replaced at random, each id (the original too) comes up 1/V of the time
    all_random = MaskingRule(ratio=0.5, mask_frac=0.0, random_frac=1.0)
    drawn, drawn_targets = mask_tokens(tokens, all_random, V, mask_id, torch.Generator().manual_seed(2))
    counts = torch.bincount(drawn[drawn_targets != IGNORE_INDEX], minlength=V + 1).double()
    assert counts[mask_id] == 0
    expected = counts.sum() / V
    assert float(((counts[:V] - expected) ** 2 / expected).sum()) < V + 5 * math.sqrt(2 * V)  # chi-square
    # unselected positions are untouched and carry no loss; selected ones carry the original
    assert torch.equal(inputs[~selected], tokens[~selected])
    assert torch.equal(targets[selected], tokens[selected])
    assert torch.equal(original_tokens(inputs, targets), tokens)


# -- the exact floor -------------------------------------------------------------------------------------
def brute_force_nll(source: MarkovCopySource, rule: MaskingRule, inputs, targets) -> torch.Tensor:
    """-log P(x_s | observations, s selected) by enumerating every hidden prefix."""
    V, m = source.vocab_size, source.prefix_len
    P = source.transition_matrix()
    truth = original_tokens(inputs, targets)
    out = torch.full(inputs.shape, float("nan"), dtype=torch.float64)
    keep_frac = 1 - rule.mask_frac - rule.random_frac
    for n in range(inputs.shape[0]):
        o = inputs[n].tolist()
        for s in range(2 * m):
            if int(targets[n, s]) == IGNORE_INDEX:
                continue
            num = den = 0.0
            for x in itertools.product(range(V), repeat=m):
                p = 1.0 / V * np.prod([P[x[t - 1], x[t]] for t in range(1, m)])
                for pos in range(2 * m):
                    h = x[pos % m]
                    given_sel = (
                        rule.mask_frac * (o[pos] == V) + rule.random_frac / V + keep_frac * (h == o[pos])
                    )
                    p *= given_sel if pos == s else (1 - rule.ratio) * (h == o[pos]) + rule.ratio * given_sel
                den += p
                num += p if x[s % m] == int(truth[n, s]) else 0.0
            out[n, s] = -math.log(num / den)
    return out


def test_floor_posterior_matches_enumeration_of_every_hidden_prefix():
    base = MarkovCopySource(vocab_size=3, prefix_len=3, branching=2)
    rule = MaskingRule(ratio=0.5)  # many masked positions: copies masked too, random replacements
    source = MaskedMarkovSource(base, rule, val_sequences=8)
    inputs, targets = next(source.train_batches(8, 6, seed=0))
    assert (targets != IGNORE_INDEX).sum() > 10
    fast = posterior_nll(base, rule, inputs, targets)
    slow = brute_force_nll(base, rule, inputs, targets)
    assert torch.equal(torch.isnan(fast), torch.isnan(slow))
    assert torch.allclose(fast.nan_to_num(), slow.nan_to_num(), atol=1e-12)


def test_mlm_floors_sit_below_the_targets():
    w = WORKLOADS["mlm-tiny"]
    data = w.make_data()
    assert 0 < data.loss_floor < w.target_loss / 5
    assert data.vocab_size == w.model.vocab_size and data.mask_id == w.mask_id
    # the floor is a lower bound of any predictor: the bigram-only posterior (copies ignored) is worse
    inputs, targets = data._val(w.val_sequences)
    copy_blind = MaskingRule(ratio=0.999999)  # treats every other observation as nearly uninformative
    worse = posterior_nll(data.base, copy_blind, inputs, targets)
    assert float(worse[targets != IGNORE_INDEX].mean()) > data.loss_floor


def test_mlm_validation_set_is_fixed_and_masked_at_the_workload_ratio():
    w = WORKLOADS["mlm-tiny"]
    a = w.make_data().val_batches(32, w.seq_len, 64)
    b = w.make_data().val_batches(32, w.seq_len, 64)
    assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b, strict=True))
    frac = torch.cat([t for _, t in a]).ne(IGNORE_INDEX).float().mean()
    assert abs(float(frac) - 0.15) < 0.03


# -- the masking-ratio technique --------------------------------------------------------------------------
def test_mlm_masking_remasks_each_batch_at_its_ratio_from_the_original_tokens():
    ctx = context("mlm-tiny", ["mlm_masking"], {"mlm_masking": {"ratio": 0.5}})
    masking = ctx.techniques[0]
    data = ctx.workload.make_data()
    inputs, targets = next(data.train_batches(64, ctx.workload.seq_len, 0))
    out = masking.select_batch(Batch(inputs, targets), ctx)
    assert torch.equal(original_tokens(out.inputs, out.targets), original_tokens(inputs, targets))
    assert abs(float(out.targets.ne(IGNORE_INDEX).float().mean()) - 0.5) < 0.03
    assert ctx.run.extra["mlm_masking_ratio"] == 0.5


# -- Hou et al.: importance-ranked dropping in the encoder ---------------------------------------------
def record_block_inputs(model) -> tuple[list, list]:
    shapes, handles = [], []
    for block in model.blocks:
        handles.append(
            block.register_forward_pre_hook(lambda mod, args, shapes=shapes: shapes.append(args[0].shape))
        )
    return shapes, handles


def test_dropped_tokens_are_absent_from_the_middle_blocks_of_the_encoder():
    ctx = context("mlm-tiny", ["importance_token_dropping"])
    model, T = ctx.model, ctx.workload.seq_len
    inputs, targets = next(ctx.workload.make_data().train_batches(8, T, 0))
    shapes, handles = record_block_inputs(model)
    model.train()
    logits = model(inputs)
    assert logits.shape[:2] == (8, T)  # every position reaches the head
    K = T // 2
    # 4 blocks: 0 whole, 1 kept queries (keys from all), 2 kept only, 3 whole again
    assert [s[1] for s in shapes] == [T, K, K, T]
    model.eval()
    shapes.clear()
    model(inputs)
    assert [s[1] for s in shapes] == [T, T, T, T]  # evaluation runs every token
    for h in handles:
        h.remove()


def test_dropped_tokens_skip_the_middle_blocks_unchanged():
    torch.manual_seed(0)
    model = Encoder(EncoderConfig(vocab_size=11, seq_len=12, n_layer=4, n_head=2, d_model=16))
    idx = torch.randint(11, (3, 12))
    keep = torch.stack([torch.randperm(12)[:5].sort().values for _ in range(3)])
    model.select_tokens = lambda ids: keep
    seen = {}
    model.blocks[0].register_forward_hook(lambda m, a, out: seen.update(after_first=out))
    model.blocks[3].register_forward_pre_hook(lambda m, a: seen.update(before_last=a[0]))
    model.train()
    model(idx)
    dropped = torch.ones(3, 12, dtype=torch.bool).scatter(1, keep, False)
    assert torch.equal(seen["before_last"][dropped], seen["after_first"][dropped])
    assert not torch.allclose(seen["before_last"][~dropped], seen["after_first"][~dropped])


def matmul_flops(model, *args) -> int:
    with FlopCounterMode(display=False) as counter:
        model(*args)
    counts = counter.get_flop_counts()["Global"]
    return sum(v for k, v in counts.items() if str(k) in ("aten.mm", "aten.addmm", "aten.bmm"))


def test_token_dropping_saves_the_matmuls_of_the_dropped_tokens():
    B, T, d, V, K = 3, 16, 8, 11, 6
    model = Encoder(EncoderConfig(vocab_size=V, seq_len=T, n_layer=4, n_head=2, d_model=d)).train()
    idx = torch.randint(V, (B, T))

    def linear(n_queries: int, n_keys: int) -> int:  # q, proj, mlp on the queries; k, v on the keys
        return 2 * B * d * d * (10 * n_queries + 2 * n_keys)

    head = 2 * B * T * d * V
    assert matmul_flops(model, idx) == 4 * linear(T, T) + head
    model.select_tokens = lambda ids: torch.arange(K).expand(B, K)
    assert matmul_flops(model, idx) == 2 * linear(T, T) + linear(K, T) + linear(K, K) + head


def test_importance_is_a_running_loss_per_id_and_masked_tokens_are_always_kept():
    ctx = context("mlm-tiny", ["importance_token_dropping"], {"importance_token_dropping": {"beta": 0.9}})
    drop = ctx.techniques[0]
    mask_id = ctx.workload.mask_id
    targets = torch.tensor([[3, IGNORE_INDEX, 3, 5]])
    drop.record(targets, torch.tensor([[1.0, 7.0, 3.0, 2.0]]))
    assert drop.importance[3] == pytest.approx(0.9 * 10 + 0.1 * 2.0)  # id 3: mean of 1 and 3
    assert drop.importance[5] == pytest.approx(0.9 * 10 + 0.1 * 2.0)
    assert drop.importance[4] == pytest.approx(10.0)  # never a target: unchanged
    assert drop.importance[mask_id] == 1e4
    drop.importance[:mask_id] = torch.arange(mask_id, dtype=torch.float)  # id i has importance i
    idx = torch.tensor([[0, 30, mask_id, 1, 31, 2, 29, mask_id]])
    # keep half: both [MASK]s, then ids 31 and 30, in sequence order
    assert drop.select(idx).tolist() == [[1, 2, 4, 7]]


def test_importance_token_dropping_trains_on_the_per_token_losses_of_the_step():
    ctx = context("mlm-tiny", ["importance_token_dropping"])
    before = ctx.techniques[0].importance.clone()
    inputs, targets = next(ctx.workload.make_data().train_batches(8, ctx.workload.seq_len, 0))
    ctx.model.train()
    loss = ctx.forward_backward(Batch(inputs, targets))
    assert math.isfinite(float(loss))
    changed = (ctx.techniques[0].importance != before).nonzero().flatten().tolist()
    assert set(changed) == set(targets[targets != IGNORE_INDEX].tolist())


# -- random-LTD in the GPT --------------------------------------------------------------------------------
def test_random_ltd_keeps_a_growing_share_of_tokens():
    assert kept_tokens(0.0, 64, 0.25, 0.7) == 16
    assert kept_tokens(0.35, 64, 0.25, 0.7) == 40
    assert kept_tokens(0.7, 64, 0.25, 0.7) == 64
    assert kept_tokens(1.0, 64, 0.25, 0.7) == 64


def test_random_ltd_dropped_tokens_are_absent_from_the_middle_blocks_of_the_gpt():
    ltd = make("random_ltd")
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=13, seq_len=20, n_layer=4, n_head=2, d_model=16))

    class Ctx:
        device = torch.device("cpu")

        class run:
            seed = 0
            extra: dict = {}

    model = ltd.build_model(model, Ctx)
    ltd.keep = 7
    shapes, _ = record_block_inputs(model)
    model.train()
    idx = torch.randint(13, (3, 20))
    assert model(idx).shape == (3, 20, 13)
    assert [s[1] for s in shapes] == [20, 7, 7, 20]  # the first and last blocks whole
    keep = ltd.subset(1, torch.zeros(3, 20, 16))
    assert keep.shape == (3, 7) and torch.equal(keep, keep.sort(dim=1).values)  # causal order kept
    assert not torch.equal(keep, ltd.subset(2, torch.zeros(3, 20, 16)))  # each block its own draw
    full = matmul_flops(model.eval(), idx)
    assert matmul_flops(model.train(), idx) < full
    shapes.clear()
    model.eval()
    model(idx)
    assert [s[1] for s in shapes] == [20, 20, 20, 20]


def test_random_ltd_kept_tokens_attend_causally_among_themselves():
    """A kept token's output in a dropping block equals the block run on the kept subsequence."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=13, seq_len=10, n_layer=3, n_head=2, d_model=16)).train()
    keep = torch.tensor([[0, 2, 3, 7, 9]])
    model.token_subset = lambda layer, x: keep if layer == 1 else None
    idx = torch.randint(13, (1, 10))
    x = model.tok_emb(idx) + model.pos_emb(torch.arange(10))
    x = model.blocks[0](x)
    expected = x.clone()
    expected[:, keep[0]] = model.blocks[1](x[:, keep[0]])
    expected = model.norm_f(model.blocks[2](expected))
    assert torch.allclose(model.hidden(idx), expected, atol=1e-6)


# -- which models each technique edits -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("technique", "workload"),
    [
        ("importance_token_dropping", "lm-tiny"),
        ("mlm_masking", "lm-tiny"),
        ("random_ltd", "mlm-tiny"),
        ("random_ltd", "lm-tiny"),  # 2 blocks: none between the first and the last
        ("loss_token_masking", "vit-tiny"),
    ],
)
def test_token_techniques_refuse_models_they_cannot_edit_in_one_line(technique, workload):
    with pytest.raises(TechniqueError) as err:
        make(technique).validate({"workload": workload, "techniques": [technique], "device": "cpu"})
    assert "\n" not in str(err.value) and technique in str(err.value)
