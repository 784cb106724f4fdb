"""Overparameterise-then-compress and the structured early-bird ticket: the models they leave are
genuinely smaller (parameters and FLOPs), the rebuild keeps the function where it should, and the
optimizer state follows the surviving weights."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from benchbed.models.gpt import GPT, GPTConfig
from benchbed.techniques import REGISTRY, TechniqueError, build_config
from benchbed.techniques.compute._structured import Plan, carry_optimizer_state, head_importance, prune
from benchbed.techniques.compute.early_bird import global_masks, mask_distance
from benchbed.techniques.compute.overparameterize_compress import distillation_loss
from benchbed.worker.assemble import build
from benchbed.worker.context import RunSettings, TrainContext, compose_step
from benchbed.workloads import WORKLOADS, Batch

CFG = GPTConfig(vocab_size=13, seq_len=8, n_layer=2, n_head=2, d_model=16)


def make(name, options=None):
    return REGISTRY[name](build_config(REGISTRY[name], options or {}, "test"))


def context(techniques, steps=20):
    workload = dataclasses.replace(WORKLOADS["lm-tiny"], model=CFG)
    run = RunSettings(
        device=torch.device("cpu"), seed=0, batch_size=4, base_batch_size=4, seq_len=8, lr=1e-2,
        weight_decay=0.1, betas=(0.9, 0.95), warmup_frac=0.0, grad_clip=1.0, budget_tokens=None,
        budget_steps=steps, budget_seconds=None, eval_every_tokens=10**9, target_loss=0.5,
    )  # fmt: skip
    ctx = TrainContext(run, workload, [*techniques, make("adamw")])
    build(ctx)
    return ctx


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 13, (4, 8), generator=g)
    return Batch(x, x.roll(-1, 1))


def steps(ctx, n, start=0):
    step = compose_step(ctx)
    for i in range(start, start + n):
        ctx.step = i
        step(batch(i), i)


def params(model) -> int:
    return sum(p.numel() for p in model.parameters())


# -- overparameterize_compress ----------------------------------------------------------------------
def test_compress_leaves_exactly_the_workload_model_smaller_than_the_wide_one():
    oc = make("overparameterize_compress", {"heads_mult": 2, "mlp_mult": 2, "extra_layers": 1})
    ctx = context([oc])
    wide_params, wide_flops = params(ctx.model), ctx.model.flops_per_token()
    assert len(ctx.model.blocks) == 3 and ctx.model.blocks[0].attn.n_head == 4
    steps(ctx, 3)
    oc.compress(ctx)
    small = GPT(CFG)
    assert params(ctx.model) == params(small) < wide_params
    assert ctx.model.flops_per_token() == small.flops_per_token() < wide_flops / 2
    assert {k: v.shape for k, v in ctx.model.state_dict().items()} == {
        k: v.shape for k, v in small.state_dict().items()
    }
    extra = ctx.run.extra
    assert extra["compress_step"] == 3 and extra["compress_small_params"] == params(small)
    assert extra["compress_wide_flops_per_token"] == wide_flops
    # the optimizer now holds the small model's parameters, and the cell trains on
    assert {id(p) for g in ctx.optimizer.param_groups for p in g["params"]} == {
        id(p) for p in ctx.model.parameters()
    }
    steps(ctx, 2, start=4)


def test_compress_keeps_the_strongest_heads_and_their_adam_moments():
    torch.manual_seed(0)
    model = GPT(dataclasses.replace(CFG, n_head=4, attn_width=32, n_layer=1))
    attn = model.blocks[0].attn
    with torch.no_grad():  # heads 1 and 3 strongest
        attn.qkv.weight.view(3, 4, 8, 16)[:, [1, 3]] *= 10
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(batch().inputs).sum().backward()
    opt.step()
    assert head_importance(attn).argsort()[-2:].sort().values.tolist() == [1, 3]
    old_qkv, old_state = attn.qkv.weight, {k: v.clone() for k, v in opt.state[attn.qkv.weight].items()}
    mapping = prune(model, Plan(blocks=[0], heads={0: [1, 3]}))
    new_opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    assert carry_optimizer_state(opt, new_opt, mapping) == len(list(model.parameters()))
    new_qkv = model.blocks[0].attn.qkv.weight
    rows = (
        torch.cat([torch.arange(h * 8, h * 8 + 8) + 32 * part for part in range(3) for h in (1, 3)])
        .sort()
        .values
    )
    assert torch.equal(new_qkv, old_qkv[rows])
    assert torch.equal(new_opt.state[new_qkv]["exp_avg"], old_state["exp_avg"][rows])
    assert torch.equal(new_opt.state[new_qkv]["step"], old_state["step"])
    assert model.blocks[0].attn.n_head == 2


def test_compress_switches_to_the_small_model_at_the_early_stop_loss():
    oc = make("overparameterize_compress", {"early_stop_ratio": 100.0, "check_every": 1})
    ctx = context([oc])
    steps(ctx, 1)
    for t in ctx.techniques:
        t.after_step(ctx)
    assert oc.compressed_at == 1  # the loss is below 100 x the target at once


def test_distillation_loss_is_ce_at_alpha_0_and_no_kl_against_itself():
    torch.manual_seed(0)
    s, t = torch.randn(2, 5, 7), torch.randn(2, 5, 7)
    y = torch.randint(0, 7, (2, 5))
    ce = torch.nn.functional.cross_entropy(s.view(-1, 7), y.view(-1))
    assert torch.allclose(distillation_loss(s, t, y, alpha=0.0, temperature=2.0), ce)
    assert torch.allclose(
        distillation_loss(s, s, y, alpha=1.0, temperature=2.0), torch.tensor(0.0), atol=1e-6
    )


def test_compress_refuses_fine_tuning_workloads_and_model_editing_partners():
    with pytest.raises(TechniqueError, match="from scratch"):
        make("overparameterize_compress").validate(
            {"workload": "ft-tiny", "techniques": ["overparameterize_compress"]}
        )
    with pytest.raises(TechniqueError, match="rebuilds the model"):
        make("overparameterize_compress").validate(
            {"workload": "lm-tiny", "techniques": ["overparameterize_compress", "layer_drop"]}
        )


# -- structured early-bird --------------------------------------------------------------------------
def test_global_masks_keep_the_fraction_and_one_per_layer():
    gates = [torch.tensor([0.1, 0.2]), torch.tensor([0.9, 0.8, 0.7, 0.01])]
    masks = global_masks(gates, keep_frac=0.5)
    assert [m.tolist() for m in masks] == [[False, True], [True, True, False, False]]
    assert mask_distance(masks, masks) == 0.0


def test_early_bird_rebuilds_a_smaller_dense_model_with_the_same_function():
    eb = make("early_bird", {"window": 2, "check_every_frac": 0.1, "keep_frac": 0.5, "l1": 0.0})
    ctx = context([eb], steps=100)
    with torch.no_grad():  # zero the gates of the structures the ticket should drop
        for g in eb.head_gates:
            g.gate[1] = 0.0
            g.gate[0] = 0.7
        for g in eb.channel_gates:
            g.gate[32:] = 0.0
    x = batch().inputs
    with torch.no_grad():
        gated = ctx.model(x)
    for s in range(1, 50):
        ctx.step = s
        eb.after_step(ctx)
        if eb.ticket is not None:
            break
    assert eb.ticket is not None
    extra = ctx.run.extra
    assert extra["early_bird_heads_kept"] == [1, 1] and extra["early_bird_channels_kept"] == [32, 32]
    assert extra["early_bird_flops_per_token_after"] < 0.6 * extra["early_bird_flops_per_token_before"]
    assert extra["early_bird_params_after"] == params(ctx.model) < extra["early_bird_params_before"]
    assert ctx.model.flops_per_token() == extra["early_bird_flops_per_token_after"]
    attn, mlp = ctx.model.blocks[0].attn, ctx.model.blocks[0].mlp
    assert (
        type(attn.proj) is torch.nn.Linear
        and attn.proj.weight.shape == (16, 8)
        and mlp.fc.weight.shape == (32, 16)
    )
    with torch.no_grad():
        assert torch.allclose(ctx.model(x), gated, atol=1e-5)  # the gates folded, only dead structures gone
    steps(ctx, 2, start=eb.drawn_at_step)  # and the smaller model trains on


def test_early_bird_l1_shrinks_the_gates_by_lr_times_l1():
    eb = make("early_bird", {"l1": 0.5})
    ctx = context([eb], steps=1000)
    lr = ctx.optimizer.param_groups[0]["lr"]
    eb.after_step(ctx)
    assert torch.allclose(eb.head_gates[0].gate, torch.full((2,), 1.0 - 0.5 * lr))
