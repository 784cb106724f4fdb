"""Fine-tuning rows: the cached pretrained base, full_finetune, frozen_base, LoRA for fine-tuning,
and the frozen-aware FLOPs formula."""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch
from workloads.tiny_finetune import FT_TEST, TINY  # registers the tiny workloads

from benchbed.models.gpt import GPT
from benchbed.techniques import REGISTRY, TechniqueError, build_config
from benchbed.worker import artifacts
from benchbed.worker.assemble import build, run_settings
from benchbed.worker.context import TrainContext, compose_step
from benchbed.workloads import Batch
from benchbed.workloads.finetune import FT_SMALL, FT_TINY

CPU = torch.device("cpu")


def make(name, options=None):
    return REGISTRY[name](build_config(REGISTRY[name], options or {}, "test"))


def cell_view(workload: str, *names: str) -> dict:
    return {
        "device": "cpu",
        "techniques": list(names),
        "batch_size": 8,
        "workload": workload,
        "world_size": 1,
    }


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """The tiny base, pretrained once for this module (6 steps)."""
    return artifacts.ensure_base(FT_TEST, CPU, tmp_path_factory.mktemp("results") / "artifacts")


def finetune_context(base, techniques, steps=4):
    workload = FT_TEST.with_inputs(base.path, {})
    run = run_settings(workload, CPU, budget_tokens=None, budget_steps=steps, stop_at_target=False)
    for t in techniques:
        t.configure(run)
    ctx = TrainContext(run, workload, [*techniques, make("adamw")])
    build(ctx)
    return ctx


def train_steps(ctx, steps):
    step = compose_step(ctx)
    it = ctx.workload.make_data().train_batches(ctx.run.batch_size, ctx.run.seq_len, 0)
    for i in range(steps):
        x, y = next(it)
        step(Batch(x, y), i)
        for t in ctx.techniques:
            t.after_step(ctx)


def base_model(base) -> GPT:
    model = GPT(TINY)
    model.load_state_dict(torch.load(base.path, weights_only=True))
    return model


# -- the cached base -------------------------------------------------------------------------------
def test_the_base_is_pretrained_once_then_reused(tmp_path, monkeypatch):
    first = artifacts.ensure_base(FT_TEST, CPU, tmp_path)
    assert not first.reused and first.pretrain_tokens == FT_TEST.base.budget_tokens
    assert first.pretrain_time_s > 0
    state = torch.load(first.path, weights_only=True)  # a plain state dict, safe to load

    def no_training(*args, **kwargs):
        raise AssertionError("the second run pretrained the base again")

    monkeypatch.setattr(artifacts, "pretrain", no_training)
    second = artifacts.ensure_base(FT_TEST, CPU, tmp_path)
    assert second.reused and second.key == first.key and second.path == first.path
    assert second.pretrain_time_s == first.pretrain_time_s  # reported from the first, not re-measured
    assert all(torch.equal(state[k], v) for k, v in torch.load(second.path, weights_only=True).items())


def test_the_base_key_follows_its_config_and_seed():
    key = artifacts.base_key(FT_TEST, CPU)
    assert artifacts.base_key(FT_TEST, CPU) == key
    assert artifacts.base_key(dataclasses.replace(FT_TEST, base_seed=1), CPU) != key
    longer = dataclasses.replace(FT_TEST, base=dataclasses.replace(FT_TEST.base, budget_tokens=999))
    assert artifacts.base_key(longer, CPU) != key
    assert FT_TINY.base.name == "lm-tiny"  # ft-tiny's corpus A is lm-tiny's


def test_fine_tuning_starts_from_the_base(base):
    ctx = finetune_context(base, [make("full_finetune")])
    reference = base_model(base)
    for (name, p), (_, q) in zip(ctx.model.named_parameters(), reference.named_parameters(), strict=True):
        assert torch.equal(p, q), name
    assert all(p.requires_grad for p in ctx.model.parameters())


def test_from_scratch_reinitialises_the_same_architecture(base):
    ctx = finetune_context(base, [make("from_scratch")])
    reference = base_model(base)
    assert not torch.equal(ctx.model.blocks[0].attn.qkv.weight, reference.blocks[0].attn.qkv.weight)
    assert sum(p.numel() for p in ctx.model.parameters()) == sum(p.numel() for p in reference.parameters())


# -- frozen_base -----------------------------------------------------------------------------------
def test_frozen_base_equals_the_base_at_step_0_and_keeps_it_unchanged(base):
    ctx = finetune_context(base, [make("frozen_base")])
    reference = base_model(base)
    x = torch.randint(0, TINY.vocab_size, (4, TINY.seq_len))
    with torch.no_grad():
        assert torch.allclose(ctx.model(x), reference(x), atol=1e-6)
    frozen = {n: p.detach().clone() for n, p in ctx.model.named_parameters() if not p.requires_grad}
    assert set(frozen) >= {n for n, _ in reference.named_parameters()} - {"lm_head.weight"}
    new = {n: p.detach().clone() for n, p in ctx.model.named_parameters() if p.requires_grad}
    assert set(new) == {n for n in new if n.startswith(f"blocks.{TINY.n_layer}.") or n == "lm_head.weight"}
    train_steps(ctx, 3)
    for name, before in frozen.items():
        assert torch.equal(dict(ctx.model.named_parameters())[name], before), f"{name} changed"
    assert any(not torch.equal(dict(ctx.model.named_parameters())[n], v) for n, v in new.items())


def test_frozen_base_backward_stops_at_the_new_layers(base):
    ctx = finetune_context(base, [make("frozen_base")])
    model = ctx.model
    d, T = TINY.d_model, TINY.seq_len
    per_block = sum(p.numel() for p in model.blocks[0].parameters())
    attn = 4.0 * d * T  # forward attention FLOPs per token of one layer (width d)
    # frozen base blocks: forward only; the new block: forward, input and weight gradients; the
    # frozen final norm: forward and input gradient; the new head: all three
    expected = TINY.n_layer * (2.0 * per_block + attn) + 6.0 * per_block + 3 * attn
    expected += 4.0 * model.norm_f.weight.numel() + 6.0 * model.lm_head.weight.numel()
    assert model.flops_per_token() == pytest.approx(expected)
    everything = GPT(TINY)
    assert everything.flops_per_token() == 6.0 * everything.num_params() + 12.0 * TINY.n_layer * d * T


# -- LoRA ------------------------------------------------------------------------------------------
def test_lora_trains_under_one_percent_on_the_ft_small_shape():
    with torch.device("meta"):
        model = make("lora").build_model(GPT(FT_SMALL.model), ctx=None)
    total = sum(p.numel() for p in model.parameters())
    trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    assert all("lora_" in n for n in trainable)  # embeddings and the tied head frozen
    assert 0 < sum(trainable.values()) <= 0.01 * total
    r, d, L = 8, FT_SMALL.model.d_model, FT_SMALL.model.n_layer
    assert sum(trainable.values()) == L * r * ((d + 3 * d) + (d + d))  # qkv and proj adapters


def test_lora_starts_as_the_base_and_merges_for_evaluation(base):
    reference = base_model(base)
    model = make("lora", {"rank": 2, "targets": ["attn.qkv", "attn.proj", "mlp.fc"]}).build_model(
        copy.deepcopy(reference), ctx=None
    )
    x = torch.randint(0, TINY.vocab_size, (4, TINY.seq_len))
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))  # B = 0: exactly the base at step 0
        for m in model.modules():
            if hasattr(m, "lora_b"):
                m.lora_b.normal_()
        unmerged = model(x)
        model.eval()
        merged = model(x)
        model.train()
    assert not torch.allclose(unmerged, reference(x))
    assert torch.allclose(merged, unmerged, atol=1e-5)
    layer = model.blocks[0].attn.qkv
    assert layer._merged is None  # unmerged again for training
    assert torch.allclose(
        layer.merged_weight(), layer.base.weight + layer.scaling * layer.lora_b @ layer.lora_a
    )


@pytest.mark.parametrize("bits, atol", [(8, 5e-3), (4, 5e-2)])
def test_lora_quantised_base_is_close_to_the_base(base, bits, atol):
    reference = base_model(base)
    model = make("lora", {"base_bits": bits}).build_model(copy.deepcopy(reference), ctx=None)
    layer = model.blocks[0].attn.qkv
    w = reference.blocks[0].attn.qkv.weight
    assert layer.frozen_weight().shape == w.shape
    assert (layer.frozen_weight() - w).abs().max() <= atol * w.abs().max() * 10
    stored = sum(b.numel() * b.element_size() for b in layer.quantized.buffers())
    assert stored < w.numel() * w.element_size() / (2 if bits == 8 else 4)


def test_lora_only_trains_adapters_and_the_base_stays_put(base):
    ctx = finetune_context(base, [make("lora", {"rank": 2})])
    frozen = {n: p.detach().clone() for n, p in ctx.model.named_parameters() if not p.requires_grad}
    train_steps(ctx, 3)
    for name, before in frozen.items():
        assert torch.equal(dict(ctx.model.named_parameters())[name], before), name
    assert {n for n, p in ctx.model.named_parameters() if p.requires_grad} == {
        f"blocks.{i}.attn.{t}.lora_{ab}" for i in range(TINY.n_layer) for t in ("qkv", "proj") for ab in "ab"
    }


@pytest.mark.parametrize("name", ["lora", "frozen_base", "full_finetune", "from_scratch"])
def test_fine_tuning_techniques_refuse_a_model_trained_from_scratch(name):
    with pytest.raises(TechniqueError, match="pretrained base.*lm-tiny"):
        make(name).validate(cell_view("lm-tiny", name))
    make(name).validate(cell_view("ft-tiny", name))


def test_fine_tuning_techniques_refuse_another_model_family():
    with pytest.raises(TechniqueError, match="edits a GPT"):
        make("lora").validate(cell_view("rlhf-tiny-rm", "lora"))


def test_ft_tiny_targets_sit_above_task_b_floor():
    floor = FT_TINY.make_data().loss_floor
    assert floor < FT_TINY.target_loss
    assert FT_TINY.make_data().fingerprint() != FT_TINY.base.make_data().fingerprint()  # a shifted task
    assert math.isfinite(FT_SMALL.make_data().loss_floor)
