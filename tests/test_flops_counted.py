"""FLOPs counted on real steps (FlopCounterMode on a replica), split into model and hardware FLOPs."""

from __future__ import annotations

import math

import pytest
import torch

from benchbed.measure import flops
from benchbed.measure.flops import FlopSampler, StepCount
from benchbed.techniques import REGISTRY, build_config
from benchbed.worker.assemble import build_context, run_settings
from benchbed.worker.offclock import measure_step
from benchbed.workloads import WORKLOADS, Batch

LM = WORKLOADS["lm-tiny"]
BATCH = 4


def context(*names, **options):
    techniques = [REGISTRY[n](build_config(REGISTRY[n], options.get(n, {}), n)) for n in names]
    if not any(t.provides_optimizer for t in techniques):
        techniques.append(REGISTRY["adamw"]())
    run = run_settings(LM, torch.device("cpu"), batch_size=BATCH, budget_tokens=None, budget_steps=100)
    return build_context(LM, techniques, run)


def lm_batch(n=BATCH, seed=0):
    x, y = next(LM.make_data().train_batches(n, LM.seq_len, seed))
    return Batch(x, y)


def per_token(ctx, step=0):
    ctx.step = step
    count = measure_step(ctx, lm_batch(ctx.run.loaded_batch_size)).count
    return count.model / count.tokens, count.hardware / count.tokens


def test_counted_baseline_agrees_with_the_hand_formula():
    ctx = context()
    model, hardware = per_token(ctx)
    cfg = ctx.model.cfg
    hand = 6 * ctx.model.num_params() + 12 * cfg.n_layer * cfg.d_model * cfg.seq_len
    assert hand == ctx.model.flops_per_token()
    # the issue asks for 5%; counted and hand agree to 0.3% here (the formula's 6N also counts the
    # norm gains), and 1% catches a missing attention term (14% of this model's FLOPs)
    assert model == pytest.approx(hand, rel=0.01)
    # the fused attention backward recomputes the scores: hardware work, not model work
    attention_recompute = 2 * cfg.n_layer * cfg.seq_len * cfg.d_model
    assert hardware - model == pytest.approx(attention_recompute)


def test_a_dropped_layer_counts_less():
    full, _ = per_token(context())
    half, _ = per_token(context("progressive_stacking"))  # top block skipped before growth
    cfg = LM.model
    block = 6 * 12 * cfg.d_model**2 + 12 * cfg.d_model * cfg.seq_len  # weights + attention, per token
    assert half == pytest.approx(full - block, rel=1e-6)
    # layer drop half-way through the budget with theta_bar ~ 0: the deepest block is dropped
    drop = context("layer_drop", layer_drop={"theta_bar": 1e-9, "gamma_per_budget": 1e6})
    dropped, _ = per_token(drop, step=50)
    assert dropped <= full - block * (1 - 1e-6)


def test_checkpointing_costs_hardware_flops_not_model_flops():
    base_model, base_hw = per_token(context())
    model, hardware = per_token(context("activation_checkpointing"))
    assert model == pytest.approx(base_model, rel=1e-9)  # same useful work
    assert hardware > base_hw and hardware > model  # plus one forward of every block


def test_extra_passes_are_hardware_flops():
    base_model, _ = per_token(context())
    model, hardware = per_token(context("sam"))
    assert model == pytest.approx(base_model, rel=1e-9)
    assert hardware / model == pytest.approx(2.0, rel=0.05)  # the ascent pass
    model, hardware = per_token(context("grad_norm_sampling"))
    assert model == pytest.approx(base_model, rel=1e-9)
    # scoring forward over a 3x pool: about 3 x 2N per trained token on top
    assert 1.7 < hardware / model < 2.3
    snip = context("snip")
    first_model, first_hw = per_token(snip, step=0)
    assert first_hw > 1.5 * first_model  # the scoring forward-backward, once
    again = measure_step(snip, lm_batch()).count  # the replica drew the masks, the real SNIP did not
    assert again.hardware == first_hw * again.tokens and snip.techniques[0].masks is None


class _NoTelemetry:
    def window_start(self):
        pass

    def window_end(self):
        pass

    def training_energy_j(self):
        return math.nan


def test_counting_does_not_change_the_training():
    """The replica shares no state with the real step: same curves and weights with and without."""
    from benchbed.worker.loop import train

    results = []
    for measure in (True, False):
        ctx = context("layer_drop", "grad_norm_sampling")
        ctx.run.budget_steps, ctx.run.eval_every_tokens = 6, 2 * BATCH * LM.seq_len
        out = train(ctx, LM.make_data(), _NoTelemetry(), measure=measure)
        results.append((out, [p.detach().clone() for p in ctx.model.parameters()]))
    (measured, w_measured), (plain, w_plain) = results
    # layer drop draws its FLOPs every step: sixteenths of the budget, so every step of these 6
    assert measured["measured"]["sampler"].steps == [0, 1, 2, 3, 4, 5]
    assert not plain["measured"]["sampler"].counts
    assert [c["val_loss"] for c in measured["curves"]] == [c["val_loss"] for c in plain["curves"]]
    assert all(torch.equal(a, b) for a, b in zip(w_measured, w_plain, strict=True))


@pytest.mark.parametrize(
    "name", ["adamw", "lion", "lars", "lamb", "nesterov", "fused_optimizer", "fp16_autocast"]
)
def test_every_optimizer_is_replicated_without_touching_the_real_one(name):
    ctx = context(name, fused_optimizer={"backend": "reference"})
    before = [p.detach().clone() for p in ctx.model.parameters()]
    state = {
        k: {n: v.clone() for n, v in s.items() if torch.is_tensor(v)} for k, s in ctx.optimizer.state.items()
    }
    m = measure_step(ctx, lm_batch())
    assert m.optimizer_state_bytes > 0 and m.grad_bytes > 0 and m.count.model > 0
    assert all(torch.equal(a, b) for a, b in zip(before, ctx.model.parameters(), strict=True))
    for p, saved in state.items():
        assert all(torch.equal(v, ctx.optimizer.state[p][n]) for n, v in saved.items())


def test_extra_regions_nest_once():
    x = torch.randn(8, 8)
    with flops.counting() as tally:
        with flops.extra_work():
            x @ x
            with flops.extra_work():
                x @ x
        x @ x
    assert tally.hardware == 3 * 2 * 8**3 and tally.extra == 2 * 2 * 8**3


def test_sampler_counts_few_steps_and_weights_them_by_span():
    sampler = FlopSampler(fractions=4)
    due = [
        s
        for s in range(100)
        if sampler.due(s, s / 100) and sampler.add(StepCount(s, 0, 0, 1), s / 100) is None
    ]
    assert due == [0, 1, 25, 50, 75]
    sampler.model_changed()
    assert sampler.due(80, 0.8)
    # first step: a one-off extra pass is charged to that step alone
    s = FlopSampler()
    s.add(StepCount(0, hardware=300.0, extra=200.0, tokens=10), 0.0)
    s.add(StepCount(1, hardware=100.0, extra=0.0, tokens=10), 0.01)
    s.add(StepCount(50, hardware=200.0, extra=0.0, tokens=10), 0.5)
    model, hardware = s.per_token(100)
    # steps 1..49 at 100, 50..99 at 200, step 0 at 300 (model 100)
    assert hardware == pytest.approx((300 + 49 * 100 + 50 * 200) / 1000)
    assert model == pytest.approx((100 + 49 * 100 + 50 * 200) / 1000)
    assert math.isnan(FlopSampler().per_token(10)[0])
