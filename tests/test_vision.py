"""Vision: the synthetic image generator, the ViT, MAE's patch masking and ConViT's GPSA."""

from __future__ import annotations

import math

import pytest
import torch

from benchbed.models.vit import ViT, ViTConfig, patchify
from benchbed.techniques import REGISTRY, TechniqueError, build_config
from benchbed.techniques.compute.convit import GPSA, head_offsets, relative_positions
from benchbed.worker.assemble import build_context, run_settings
from benchbed.worker.context import compose_step
from benchbed.workloads import WORKLOADS, Batch
from benchbed.workloads.data.images import CLASSES, ShapesSource


def make(name: str, options: dict | None = None):
    cls = REGISTRY[name]
    return cls(build_config(cls, options or {}, f"techniques.{name}"))


def context(names: list[str], options: dict | None = None, steps: int = 10):
    options = options or {}
    w = WORKLOADS["vit-tiny"]
    techniques = [make(n, options.get(n)) for n in [*names, "adamw"]]
    run = run_settings(w, torch.device("cpu"), budget_tokens=None, budget_steps=steps)
    view = {"device": "cpu", "techniques": [*names, "adamw"], "workload": "vit-tiny", "world_size": 1}
    return build_context(w, techniques, run, view)


# -- the image generator -----------------------------------------------------------------------------
def test_image_generator_is_deterministic_for_a_seed():
    source = ShapesSource(image_size=24)
    a = next(source.train_batches(16, 1, seed=3))
    b = next(ShapesSource(image_size=24).train_batches(16, 1, seed=3))
    c = next(source.train_batches(16, 1, seed=4))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    assert a[0].shape == (16, 3, 24, 24) and a[0].dtype == torch.float32
    assert a[1].dtype == torch.long and int(a[1].min()) >= 0 and int(a[1].max()) < len(CLASSES)
    v1, v2 = source.val_batches(8, 1, 32), ShapesSource(image_size=24).val_batches(8, 1, 32)
    assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(v1, v2, strict=True))
    assert source.fingerprint() == ShapesSource(image_size=24).fingerprint()
    assert source.fingerprint() != ShapesSource(image_size=24, noise_std=0.2).fingerprint()


def test_images_of_one_class_share_their_structure_not_their_colours():
    """Noise-free discs: the pixels inside differ from the background, colours vary per image."""
    from benchbed.workloads.data.images import render

    g = torch.Generator().manual_seed(0)
    images = render(torch.zeros(64, dtype=torch.long), 24, 0.0, g)  # class 0: disc
    centre, corner = images[:, :, 12, 12], images[:, :, 0, 0]
    assert bool(((centre - corner).abs().amax(dim=1) > 0.3 / 0.3).all())  # the contrast floor shows
    assert float(corner.std(dim=0).mean()) > 0.5  # backgrounds are random


# -- the ViT -----------------------------------------------------------------------------------------
def test_patchify_is_row_major_with_channels_last():
    images = torch.arange(2 * 3 * 4 * 4, dtype=torch.float).view(2, 3, 4, 4)
    patches = patchify(images, 2)
    assert patches.shape == (2, 4, 12)
    # patch 1 is row 0, column 1: pixels (0, 2), (0, 3), (1, 2), (1, 3), channels last
    expected = torch.stack([images[0, :, r, c] for r in (0, 1) for c in (2, 3)]).flatten()
    assert torch.equal(patches[0, 1], expected)


def test_vit_classifies_every_image():
    model = ViT(
        ViTConfig(image_size=8, patch_size=4, channels=3, n_classes=5, n_layer=2, n_head=2, d_model=8)
    )
    assert model(torch.randn(3, 3, 8, 8)).shape == (3, 5)
    assert WORKLOADS["vit-tiny"].seq_len == 1  # the budget counts images


# -- MAE -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ratio", [0.75, 0.5])
def test_mae_encoder_input_length_equals_the_visible_count(ratio):
    ctx = context(["patch_masking"], {"patch_masking": {"mask_ratio": ratio}})
    mae, model = ctx.techniques[0], ctx.model
    n_patches = model.cfg.n_patches
    visible = round(n_patches * (1 - ratio))
    shapes = []
    for block in model.blocks:
        block.register_forward_pre_hook(lambda mod, args: shapes.append(tuple(args[0].shape)))
    decoder_shapes = []
    mae.decoder.blocks[0].register_forward_pre_hook(lambda mod, args: decoder_shapes.append(args[0].shape))
    images, labels = next(ctx.workload.make_data().train_batches(5, 1, 0))
    loss = mae.mae_loss(model, Batch(images, labels))
    assert math.isfinite(loss.item())
    assert shapes == [(5, visible, model.cfg.d_model)] * len(model.blocks)
    assert decoder_shapes[0][1] == n_patches  # the decoder sees every position
    assert ctx.run.extra["mae_visible_patches"] == f"{visible} of {n_patches}"


def test_mae_loss_is_on_the_masked_patches_only():
    ctx = context(["patch_masking"])
    mae, model = ctx.techniques[0], ctx.model
    images, labels = next(ctx.workload.make_data().train_batches(4, 1, 0))
    keep = mae.visible(4, model.cfg.n_patches, torch.device("cpu"))
    mae.visible = lambda *args: keep  # the same visible patches in every call
    visible = torch.zeros(4, model.cfg.n_patches, 1).scatter(1, keep.unsqueeze(-1), 1.0)
    decode = mae.decoder.forward
    base = mae.mae_loss(model, Batch(images, labels))
    mae.decoder.forward = lambda encoded, k: decode(encoded, k) + 100.0 * visible
    assert torch.allclose(mae.mae_loss(model, Batch(images, labels)), base)
    mae.decoder.forward = lambda encoded, k: decode(encoded, k) + 100.0 * (1 - visible)
    assert float(mae.mae_loss(model, Batch(images, labels))) > 100.0


def test_patch_masking_pretrains_then_trains_on_labels_on_one_clock():
    ctx = context(["patch_masking"], {"patch_masking": {"pretrain_frac": 0.5, "finetune": "linear"}}, steps=4)
    mae = ctx.techniques[0]
    step = compose_step(ctx)
    data = ctx.workload.make_data().train_batches(ctx.run.batch_size, 1, 0)
    losses = []
    for i in range(4):
        images, labels = next(data)
        losses.append(ctx.loss_fn)
        step(Batch(images, labels), i)
        losses[-1] = ctx.loss_fn
        ctx.step += 1
    assert losses[:2] == [mae.mae_loss, mae.mae_loss]
    assert losses[2:] == [mae.classification_loss, mae.classification_loss]
    assert ctx.run.extra["mae_switch_step"] == 2
    trainable = {n for n, p in ctx.model.named_parameters() if p.requires_grad}
    assert trainable == {"head.weight", "head.bias"}  # the linear probe
    # the labelled phase starts from a fresh optimizer state: the frozen encoder's pre-training
    # moments are gone, the head's are two steps old
    encoder_weight = ctx.model.blocks[0].attn.q.weight
    assert encoder_weight not in ctx.optimizer.state
    assert int(ctx.optimizer.state[ctx.model.head.weight]["step"]) == 2
    assert any(n.startswith("mae_decoder.") for n, _ in ctx.model.named_parameters())


# -- ConViT ----------------------------------------------------------------------------------------------
def test_gpsa_at_initialisation_attends_locally_as_the_papers_formula_gives():
    grid, heads, alpha = 5, 4, 1.5
    gpsa = GPSA(d_model=16, n_head=heads, grid=grid, locality_strength=alpha)
    positional = gpsa.positional_attention().double()
    offsets = head_offsets(heads).double()
    assert offsets.tolist() == [[-0.5, -0.5], [0.5, -0.5], [-0.5, 0.5], [0.5, 0.5]]
    rows = torch.arange(grid).repeat_interleave(grid).double()
    cols = torch.arange(grid).repeat(grid).double()
    for h in range(heads):
        # eq. 5: softmax_j(-alpha ||delta_ij - Delta_h||^2), delta_ij = position of key j - query i
        dx = cols.view(1, -1) - cols.view(-1, 1) - offsets[h, 0]
        dy = rows.view(1, -1) - rows.view(-1, 1) - offsets[h, 1]
        expected = torch.softmax(-alpha * (dx**2 + dy**2), dim=-1)
        assert torch.allclose(positional[h], expected, atol=1e-6)
    # locality: from the centre patch, each head puts most of its weight on the 2x2 block at its offset
    centre = (grid // 2) * grid + grid // 2
    for h, (ox, oy) in enumerate(offsets.tolist()):
        block = [
            (grid // 2 + y) * grid + grid // 2 + x
            for x in ((0, 1) if ox > 0 else (-1, 0))
            for y in ((0, 1) if oy > 0 else (-1, 0))
        ]
        assert float(positional[h, centre, block].sum()) > 0.85


def test_gpsa_gates_content_and_positional_attention_at_sigmoid_one():
    torch.manual_seed(0)
    gpsa = GPSA(d_model=16, n_head=4, grid=3)
    x = torch.randn(2, 9, 16)
    attn = gpsa.attention(x)
    assert torch.allclose(attn.sum(-1), torch.ones(2, 4, 9))
    q, k = gpsa.qk(x).split(16, dim=2)
    q, k = (t.view(2, 9, 4, 4).transpose(1, 2) for t in (q, k))
    content = (q @ k.transpose(-2, -1) / 2.0).softmax(-1)
    gate = 1 / (1 + math.exp(-1.0))
    assert torch.allclose(attn, (1 - gate) * content + gate * gpsa.positional_attention(), atol=1e-6)
    assert torch.equal(gpsa.v.weight, torch.eye(16))  # the value projection starts at the identity


def test_heads_beyond_the_square_start_with_uniform_positional_attention():
    gpsa = GPSA(d_model=12, n_head=6, grid=3)
    positional = gpsa.positional_attention()
    assert torch.allclose(positional[4:], torch.full((2, 9, 9), 1 / 9))
    assert relative_positions(3).shape == (9, 9, 3)


def test_convit_replaces_the_first_blocks_attention():
    ctx = context(["convit"])
    kinds = [type(b.attn).__name__ for b in ctx.model.blocks]
    assert kinds == ["GPSA", "GPSA", "Attention", "Attention"]  # all but the last two, as 10 of 12
    images, labels = next(ctx.workload.make_data().train_batches(3, 1, 0))
    assert ctx.model(images).shape == (3, len(CLASSES))


@pytest.mark.parametrize(
    ("technique", "workload"),
    [
        ("convit", "lm-tiny"),
        ("patch_masking", "mlm-tiny"),
        ("lora", "vit-tiny"),
        ("flash_attention", "mlm-tiny"),
    ],
)
def test_model_editing_techniques_refuse_other_families_in_one_line(technique, workload):
    with pytest.raises(TechniqueError) as err:
        make(technique).validate({"workload": workload, "techniques": [technique], "device": "cpu"})
    message = str(err.value)
    assert "\n" not in message and technique in message and workload in message
