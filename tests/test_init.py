"""Norm-free initialisation schemes: ReZero, Fixup, SkipInit."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from benchbed.models.gpt import GPT, GPTConfig
from benchbed.techniques import REGISTRY, TechniqueError, build_config
from benchbed.techniques.compute.fixup import fixup_scale

CFG = GPTConfig(vocab_size=13, seq_len=8, n_layer=3, n_head=2, d_model=16)


def fresh() -> GPT:
    torch.manual_seed(0)
    return GPT(CFG)


def apply(name: str, options: dict | None = None) -> GPT:
    technique = REGISTRY[name](build_config(REGISTRY[name], options or {}, "test"))
    return technique.build_model(fresh(), ctx=None)


def embedding_path(model: GPT, idx: torch.Tensor) -> torch.Tensor:
    x = model.tok_emb(idx) + model.pos_emb(torch.arange(idx.shape[1]))
    return model.lm_head(model.norm_f(x))


def scalar(p: torch.Tensor) -> float:
    return float(p.detach())


IDX = torch.randint(0, 13, (2, 8), generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("name", ["rezero", "fixup", "skipinit"])
def test_norm_free_models_compute_exactly_the_embedding_path_at_init(name):
    model = apply(name)
    assert isinstance(model.norm_f, nn.Identity)
    for block in model.blocks:
        assert isinstance(block.norm1, nn.Identity) and isinstance(block.norm2, nn.Identity)
    with torch.no_grad():
        assert torch.equal(model(IDX), embedding_path(model, IDX))  # every residual branch adds exactly 0


def test_rezero_shares_one_zero_alpha_per_layer_and_can_keep_the_final_norm():
    model = apply("rezero", {"keep_final_norm": True})
    assert isinstance(model.norm_f, nn.LayerNorm)
    for block in model.blocks:
        assert block.attn_scale is block.mlp_scale and scalar(block.attn_scale) == 0.0
    alphas = [p for n, p in model.named_parameters() if "scale" in n]
    assert len(alphas) == CFG.n_layer  # shared parameters are counted once


def test_rezero_branch_gradient_flows_to_alpha():
    model = apply("rezero")
    model(IDX).sum().backward()
    assert any(float(b.attn_scale.grad.abs()) > 0 for b in model.blocks)


def test_fixup_scales_follow_the_formula_for_the_models_depth():
    reference, model = fresh(), apply("fixup")
    n_branches, m = 2 * CFG.n_layer, 2
    scale = n_branches ** (-1.0 / (2 * m - 2))
    assert fixup_scale(n_branches) == pytest.approx(1.0 / math.sqrt(6))
    for ref_block, block in zip(reference.blocks, model.blocks, strict=True):
        assert torch.allclose(block.attn.qkv.weight, ref_block.attn.qkv.weight * scale)
        assert torch.allclose(block.mlp.fc.weight, ref_block.mlp.fc.weight * scale)
        assert (
            torch.count_nonzero(block.attn.proj.weight) == 0
            and torch.count_nonzero(block.mlp.proj.weight) == 0
        )
        assert scalar(block.attn_scale) == 1.0 and scalar(block.mlp_scale) == 1.0
        for layer in (block.attn.qkv, block.attn.proj, block.mlp.fc, block.mlp.proj):
            assert scalar(layer.fixup_bias_in) == 0.0
        assert scalar(block.mlp.fc.fixup_bias_out) == 0.0
    # the tied embedding / output head keeps its standard init (see the module docstring)
    assert torch.equal(model.tok_emb.weight, reference.tok_emb.weight)


def test_fixup_scalar_biases_act_where_the_paper_puts_them():
    model = apply("fixup")
    block = model.blocks[0]
    x = torch.randn(2, 8, 16, dtype=torch.float32)
    with torch.no_grad():
        block.attn.qkv.fixup_bias_in.fill_(0.5)
        out = block.attn.qkv(x)
        assert torch.allclose(out, nn.functional.linear(x + 0.5, block.attn.qkv.weight))
        block.mlp.fc.fixup_bias_out.fill_(-0.25)
        assert torch.allclose(block.mlp.fc(x), nn.functional.linear(x + 0.0, block.mlp.fc.weight) - 0.25)


@pytest.mark.parametrize(
    "alpha_init, expected", [(0.0, 0.0), (0.1, 0.1), ("inv_sqrt_depth", 1 / math.sqrt(6))]
)
def test_skipinit_has_one_scalar_per_branch(alpha_init, expected):
    model = apply("skipinit", {"alpha_init": alpha_init})
    for block in model.blocks:
        assert block.attn_scale is not block.mlp_scale
        assert scalar(block.attn_scale) == pytest.approx(expected) and scalar(
            block.mlp_scale
        ) == pytest.approx(expected)


def test_skipinit_rejects_an_unknown_rule():
    with pytest.raises(TechniqueError, match="alpha_init"):
        build_config(REGISTRY["skipinit"], {"alpha_init": "half"}, "techniques.skipinit")


def test_norm_free_schemes_refuse_each_other():
    for name in ("rezero", "fixup", "skipinit"):
        others = {"rezero", "fixup", "skipinit"} - {name}
        assert set(REGISTRY[name].conflicts) == others


@pytest.mark.parametrize("name", ["rezero", "fixup", "skipinit"])
def test_norm_free_models_train_without_nan(name):
    model = apply(name)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        idx = torch.randint(0, 13, (4, 8), generator=g)
        loss = nn.functional.cross_entropy(model(idx).view(-1, 13), idx.roll(-1, 1).view(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert math.isfinite(float(loss.detach()))
