"""Memory measured on every device (saved activations, parameters, gradients, optimizer state), the
untimed warm-up undone exactly, clipping without pruned weights, and evaluation in float32."""

from __future__ import annotations

import copy

import pytest
import torch

from benchbed.measure.memory import measuring_saved, storage_bytes
from benchbed.techniques import REGISTRY, build_config
from benchbed.techniques.compute._masks import prunable_weights
from benchbed.worker.assemble import build_context, run_settings
from benchbed.worker.context import compose_step
from benchbed.worker.loop import evaluate
from benchbed.worker.offclock import measure_step, warm_up
from benchbed.workloads import WORKLOADS, Batch

LM = WORKLOADS["lm-tiny"]


def context(*names, batch_size=4, **options):
    techniques = [REGISTRY[n](build_config(REGISTRY[n], options.get(n, {}), n)) for n in names]
    if not any(t.provides_optimizer for t in techniques):
        techniques.append(REGISTRY["adamw"]())
    run = run_settings(LM, torch.device("cpu"), batch_size=batch_size, budget_tokens=None, budget_steps=50)
    return build_context(LM, techniques, run)


def lm_batch(n=4, seed=0):
    x, y = next(LM.make_data().train_batches(n, LM.seq_len, seed))
    return Batch(x, y)


def test_saved_bytes_by_hand_with_shared_storages_counted_once():
    x = torch.randn(100, requires_grad=True)
    with measuring_saved(exclude=[x]) as meter:
        a = x.exp()  # saves its result a (400 bytes)
        b = a * a  # saves a twice: the same storage, counted once
        c = b[:50].sum()  # a view of b is not saved by sum
        c.backward()
    assert meter.peak == 100 * 4
    assert meter.current == 0  # released after backward


def test_activation_checkpointing_saves_fewer_bytes_on_the_cpu():
    base = measure_step(context(), lm_batch()).saved_activation_bytes
    ckpt = measure_step(context("activation_checkpointing"), lm_batch()).saved_activation_bytes
    assert 0 < ckpt < 0.9 * base
    # the baseline's saved bytes scale with the batch (activations, not weights)
    double = measure_step(context(batch_size=8), lm_batch(8)).saved_activation_bytes
    assert double == pytest.approx(2 * base, rel=0.05)


def test_parameter_gradient_and_optimizer_state_bytes():
    ctx = context()
    m = measure_step(ctx, lm_batch())
    params = list(ctx.model.parameters())
    trainable = sum(p.numel() * 4 for p in params if p.requires_grad)
    assert storage_bytes(params) == trainable  # the tied head and embedding count once
    assert m.grad_bytes == trainable
    # AdamW: exp_avg and exp_avg_sq per parameter, plus a 4-byte step counter per tensor
    assert m.optimizer_state_bytes == 2 * trainable + 4 * len(params)
    lion = measure_step(context("lion"), lm_batch())
    assert lion.optimizer_state_bytes == trainable  # one momentum tensor
    lora = measure_step(context("lora"), lm_batch())
    assert lora.grad_bytes < trainable / 2 and lora.optimizer_state_bytes < m.optimizer_state_bytes / 2


@pytest.mark.parametrize(
    "names",
    [["adamw"], ["lion"], ["lars"], ["lamb"], ["nesterov"], ["sam"], ["fp16_autocast"], ["fused_optimizer"]],
)
def test_warm_up_is_undone_exactly(names):
    options = {"fused_optimizer": {"backend": "reference"}}
    ctx = context(*names, **options)
    params = [p.detach().clone() for p in ctx.model.parameters()]
    state = copy.deepcopy(ctx.optimizer.state_dict())
    scale = ctx.scaler.get_scale() if ctx.scaler is not None else None
    warm_up(ctx, lm_batch(seed=5))
    assert all(torch.equal(a, b) for a, b in zip(params, ctx.model.parameters(), strict=True))
    after = ctx.optimizer.state_dict()
    assert after["state"].keys() == state["state"].keys()
    for key, saved in state["state"].items():
        for name, value in saved.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(after["state"][key][name])), name
    assert all(p.grad is None for p in ctx.model.parameters())
    if scale is not None:
        assert ctx.scaler.get_scale() == scale


def test_warm_up_runs_no_technique_hook():
    """SNIP's scoring belongs to its first timed step, not to the excluded warm-up."""
    ctx = context("snip", "grad_norm_sampling")
    warm_up(ctx, lm_batch(seed=5))
    assert ctx.techniques[0].masks is None
    assert ctx.step == 0 and ctx.tokens == 0


def test_clipping_ignores_pruned_weights():
    ctx = context("snip", snip={"keep_frac": 0.3})
    ctx.run.grad_clip = 1e-3  # every step clips
    compose_step(ctx)(lm_batch(), 0)  # draws the masks, then trains
    snip = ctx.techniques[0]
    ctx.zero_grad()
    ctx.forward_backward(lm_batch(seed=1))
    ctx.optimizer_step()  # unscale, on_gradients, clip, step
    weights = prunable_weights(ctx.model)
    for w, m in zip(weights, snip.masks, strict=True):
        assert torch.count_nonzero(w.grad[~m]) == 0
    total = torch.linalg.vector_norm(
        torch.stack([torch.linalg.vector_norm(p.grad) for p in ctx.model.parameters()])
    )
    assert float(total) == pytest.approx(1e-3, rel=1e-4)  # the clipped norm is the trained weights'


def test_every_cell_evaluates_in_float32():
    ctx = context("bf16_autocast")
    val = LM.make_data().val_batches(4, LM.seq_len, 8)
    fp32 = LM.evaluate(ctx.model, val, ctx.device)
    assert evaluate(ctx, val) == fp32
    assert LM.evaluate(ctx.model, val, ctx.device, ctx.autocast) != fp32  # what bf16 evaluation gave
