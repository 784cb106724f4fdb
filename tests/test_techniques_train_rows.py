"""Unit checks of the survey's remaining technique rows: sparse, incremental, data, memory."""

from __future__ import annotations

import dataclasses
import math
import os

import pytest
import torch

from benchbed.models.gpt import GPT, GPTConfig
from benchbed.techniques import REGISTRY, TechniqueError, build_config
from benchbed.techniques.compute._masks import global_top_masks, prunable_weights
from benchbed.techniques.compute.early_bird import mask_distance
from benchbed.techniques.compute.layer_drop import keep_probability
from benchbed.techniques.compute.snip import connection_sensitivity
from benchbed.techniques.memory.cpu_offload_optimizer import OffloadedAdamW
from benchbed.techniques.memory.fp16_autocast import fp16_autocast_supported
from benchbed.worker.assemble import build
from benchbed.worker.context import RunSettings, TrainContext
from benchbed.workloads import IGNORE_INDEX, Batch

CFG = GPTConfig(vocab_size=13, seq_len=8, n_layer=2, n_head=2, d_model=16)


def make(name, options=None):
    return REGISTRY[name](build_config(REGISTRY[name], options or {}, "test"))


def context(techniques, steps=10, batch_size=4):
    from benchbed.workloads import WORKLOADS

    w = WORKLOADS["lm-tiny"]
    workload = dataclasses.replace(w, model=CFG)
    run = RunSettings(
        device=torch.device("cpu"), seed=0, batch_size=batch_size, base_batch_size=batch_size, seq_len=8, lr=1e-2,
        weight_decay=0.1, betas=(0.9, 0.95), warmup_frac=0.0, grad_clip=1.0, budget_tokens=None,
        budget_steps=steps, budget_seconds=None, eval_every_tokens=10**9, target_loss=0.0,
    )  # fmt: skip
    for t in techniques:
        t.configure(run)
    ctx = TrainContext(run, workload, [*techniques, make("adamw")])
    build(ctx)
    return ctx


def batch(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 13, (n, 8), generator=g)
    return Batch(x, x.roll(-1, 1))


# -- sparse ------------------------------------------------------------------------------------------
def test_global_top_masks_keep_exactly_the_fraction_with_ties():
    scores = [torch.tensor([[3.0, 1.0], [1.0, 0.0]]), torch.tensor([1.0, 5.0, 1.0])]
    masks = global_top_masks(scores, keep_frac=3 / 7)
    assert sum(int(m.sum()) for m in masks) == 3
    assert bool(masks[0][0, 0]) and bool(masks[1][1])  # the two largest survive


def test_snip_sensitivity_is_normalised_g_times_w():
    w = torch.nn.Parameter(torch.tensor([[1.0, -2.0], [0.5, 4.0]]))
    w.grad = torch.tensor([[0.5, 0.5], [-1.0, 0.0]])
    (s,) = connection_sensitivity([w])
    raw = torch.tensor([[0.5, 1.0], [0.5, 0.0]])
    assert torch.allclose(s, raw / raw.sum())


def test_snip_prunes_at_the_first_step_and_keeps_pruned_weights_at_zero():
    snip = make("snip", {"keep_frac": 0.3})
    ctx = context([snip])
    from benchbed.worker.context import compose_step

    step = compose_step(ctx)
    for i in range(3):
        step(batch(seed=i), i)
        for t in ctx.techniques:
            t.after_step(ctx)
    weights = prunable_weights(ctx.model)
    total = sum(w.numel() for w in weights)
    nonzero = sum(int(torch.count_nonzero(w)) for w in weights)
    assert nonzero == round(0.3 * total)
    for w, m in zip(weights, snip.masks, strict=True):
        assert torch.count_nonzero(w[~m]) == 0


def test_mask_distance_is_the_normalised_hamming_distance():
    a = [torch.tensor([True, False, True, True])]
    b = [torch.tensor([True, True, False, True])]
    assert mask_distance(a, b) == 0.5
    assert mask_distance(a, a) == 0.0


def test_early_bird_draws_the_ticket_once_the_mask_is_stable():
    eb = make("early_bird", {"window": 2, "epsilon": 0.1, "check_every_frac": 0.1, "keep_frac": 0.5})
    ctx = context([eb], steps=100)
    # no training: the gates shrink alike, so the distances are 0 and the ticket is drawn at the 3rd check
    for step in range(1, 40):
        ctx.step = step
        eb.after_step(ctx)
        if eb.ticket is not None:
            break
    assert eb.drawn_at_step is not None and eb.drawn_at_step <= 35
    # structured: half the heads and half the MLP channels are gone from the dense model
    assert sum(b.attn.n_head for b in ctx.model.blocks) == CFG.n_layer * CFG.n_head // 2
    assert sum(b.mlp.fc.out_features for b in ctx.model.blocks) == CFG.n_layer * 4 * CFG.d_model // 2


# -- incremental -----------------------------------------------------------------------------------
def test_layer_drop_schedule_follows_the_paper():
    assert keep_probability(0.0, 1, 4, 0.5, 20.0) == pytest.approx(1.0)  # theta(0) = 1: nothing dropped
    theta = 0.5 * math.exp(-20.0 * 0.1) + 0.5
    assert keep_probability(0.1, 3, 4, 0.5, 20.0) == pytest.approx(1 - 3 / 4 * (1 - theta))
    assert keep_probability(1.0, 4, 4, 0.5, 1e9) == pytest.approx(0.5)  # the deepest block at theta_bar


def test_layer_drop_restores_every_block_for_evaluation():
    drop = make("layer_drop", {"gamma_per_budget": 1e6})
    ctx = context([drop])
    ctx.step = 5
    from benchbed.worker.context import compose_step

    compose_step(ctx)(batch(), 5)
    assert all("forward" not in b.__dict__ for b in ctx.model.blocks)


def test_progressive_stacking_skips_the_top_half_then_copies_the_bottom_half():
    stack = make("progressive_stacking", {"grow_at": 0.5})
    ctx = context([stack], steps=10)
    top, bottom = ctx.model.blocks[1], ctx.model.blocks[0]
    x = torch.randn(2, 8, 16)
    assert torch.equal(top(x), x)  # inactive: identity
    ctx.step = 4
    stack.after_step(ctx)
    assert not stack.grown
    ctx.step = 5
    stack.after_step(ctx)
    assert stack.grown and ctx.run.extra["progressive_stacking_step"] == 5
    for (name, p), (_, q) in zip(bottom.named_parameters(), top.named_parameters(), strict=True):
        assert torch.equal(p, q), name
    assert torch.allclose(top(x), bottom(x))


# -- data --------------------------------------------------------------------------------------------
def test_loss_token_masking_masks_about_the_fraction_of_targets_and_keeps_inputs():
    drop = make("loss_token_masking", {"drop_frac": 0.25})
    ctx = context([drop])
    b = batch(n=64)
    out = drop.select_batch(b, ctx)
    assert torch.equal(out.inputs, b.inputs)
    dropped = float((out.targets == IGNORE_INDEX).float().mean())
    assert 0.2 < dropped < 0.3
    kept = out.targets != IGNORE_INDEX
    assert torch.equal(out.targets[kept], b.targets[kept])


# -- memory ------------------------------------------------------------------------------------------
def test_lora_starts_as_the_base_model_and_trains_only_adapters_and_embeddings():
    torch.manual_seed(0)
    base = GPT(CFG)
    lora = make("lora", {"rank": 2, "alpha": 4.0})
    torch.manual_seed(0)
    model = lora.build_model(GPT(CFG), ctx=None)
    idx = batch().inputs
    with torch.no_grad():
        assert torch.allclose(model(idx), base(idx))  # B = 0
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert all("lora_" in n or n in ("tok_emb.weight", "pos_emb.weight") for n in trainable)
    assert sum("lora_a" in n for n in trainable) == 2 * CFG.n_layer
    attn = model.blocks[0].attn
    assert attn.qkv.scaling == 2.0 and attn.qkv.lora_a.shape == (2, 16) and attn.qkv.lora_b.shape == (48, 2)


def test_offloaded_adamw_matches_adamw():
    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(3, 3))
    b = torch.nn.Parameter(a.detach().clone())
    reference = torch.optim.AdamW([a], lr=0.1, weight_decay=0.1)
    offloaded = OffloadedAdamW([{"params": [b], "weight_decay": 0.1}], lr=0.1)
    for i in range(3):
        g = torch.full((3, 3), 0.1 * (i + 1))
        a.grad, b.grad = g.clone(), g.clone()
        reference.step()
        offloaded.step()
    assert torch.allclose(a, b)
    offloaded.zero_grad()
    assert b.grad is None


def test_cpu_offload_and_data_parallel_refuse_cells_they_cannot_run():
    cell = {"device": "cpu", "techniques": ["cpu_offload_optimizer"], "batch_size": 32, "workload": "lm-tiny"}
    with pytest.raises(TechniqueError, match="cuda"):
        make("cpu_offload_optimizer").validate(cell)
    if os.environ.get("WORLD_SIZE") is None:
        with pytest.raises(TechniqueError, match="torchrun --nproc-per-node=2"):
            make("data_parallel").validate({**cell, "techniques": ["data_parallel"]})


def test_fp16_autocast_runs_on_this_cpu_with_loss_scaling():
    assert fp16_autocast_supported("cpu")  # torch >= 2.4 autocasts float16 on the CPU
    fp16 = make("fp16_autocast")
    fp16.validate({"device": "cpu"})
    ctx = context([fp16])
    assert ctx.run.autocast_dtype == torch.float16 and ctx.scaler is not None


def test_data_parallel_wraps_in_ddp_in_a_one_process_group(monkeypatch):
    import socket

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for key, value in {"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MASTER_PORT", str(port))
    ddp = make("data_parallel", {"world_size": 1})
    ddp.validate({"device": "cpu", "techniques": ["data_parallel"]})
    try:
        ctx = context([ddp])
        assert isinstance(ctx.model, DistributedDataParallel) and ctx.run.world_size == 1
        from benchbed.worker.context import compose_step

        before = [p.detach().clone() for p in ctx.model.parameters()]
        loss = compose_step(ctx)(batch(), 0)
        assert math.isfinite(float(loss))
        assert any(not torch.equal(p, q) for p, q in zip(ctx.model.parameters(), before, strict=True))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
