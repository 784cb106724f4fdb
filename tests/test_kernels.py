"""Kernel registry, PyTorch references against float64 / hand-computed values, and the hardware
techniques on the CPU (where `auto` must pick the reference and record that it did)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from benchbed import kernels
from benchbed.kernels import cross_entropy, flash_attention, norms, optimizer_steps
from benchbed.models.gpt import GPT, GPTConfig
from benchbed.techniques import REGISTRY as TECHNIQUES
from benchbed.techniques import TechniqueError, build_config
from benchbed.worker.context import RunSettings, TrainContext
from benchbed.workloads import WORKLOADS, Batch

default_loss = WORKLOADS["lm-tiny"].loss  # the language-model loss the fused kernels must equal


# -- registry -------------------------------------------------------------------------------------
def test_registry_lists_every_op_with_reference_and_triton():
    expected = {
        "flash_attention",
        "block_sparse_attention",
        "cross_entropy",
        "linear_cross_entropy",
        "rms_norm",
        "layer_norm",
        "adamw_step",
        "lion_step",
        "fp8_linear",
        "int8_linear",
    }
    assert set(kernels.REGISTRY) == expected
    for name, op in kernels.REGISTRY.items():
        assert op.name == name and callable(op.reference) and "triton" in op.backends
        assert kernels.get(name, "reference") is op.reference
        assert kernels.get(name, "triton") is op.backends["triton"]


def test_auto_picks_reference_without_cuda(monkeypatch):
    monkeypatch.setattr(kernels, "cuda_available", lambda: False)
    assert kernels.get("rms_norm", "auto", "cpu") is norms.rms_norm_reference
    assert kernels.get("rms_norm", "auto", "cuda") is norms.rms_norm_reference
    monkeypatch.setattr(kernels, "cuda_available", lambda: True)
    assert kernels.get("rms_norm", "auto", "cuda") is norms.rms_norm_triton
    assert kernels.get("rms_norm", "auto", "cpu") is norms.rms_norm_reference  # tensors on the CPU


def test_get_refuses_unknown_op_and_backend():
    with pytest.raises(KeyError, match="unknown kernel op 'softmax'"):
        kernels.get("softmax")
    with pytest.raises(ValueError, match="backend 'tpu'"):
        kernels.get("rms_norm", "tpu")
    with pytest.raises(KeyError, match="no backend 'cuda'"):
        kernels.get("rms_norm", "cuda")


def test_describe_kernels_rows():
    rows = kernels.describe_kernels()
    assert [r["op"] for r in rows] == list(kernels.REGISTRY)
    for row in rows:
        assert set(row) == {"op", "backends", "dtypes", "devices", "auto_here", "description"}
        assert row["backends"].startswith("reference")
        assert row["auto_here"] in ("reference", "triton")


def test_every_kernel_has_aot_configurations():
    names = {c.kernel_name for c in kernels.aot_configs()}
    assert names == {
        "_attn_fwd_kernel",
        "_attn_bwd_dkdv_kernel",
        "_attn_bwd_dq_kernel",
        "_bsa_fwd_kernel",
        "_bsa_bwd_dkdv_kernel",
        "_bsa_bwd_dq_kernel",
        "_cross_entropy_kernel",
        "_norm_fwd_kernel",
        "_norm_bwd_kernel",
        "_adamw_kernel",
        "_lion_kernel",
        "_scaled_mm_kernel",
    }
    for config in kernels.aot_configs():
        assert list(config.signature)  # every argument typed, constexprs included


# -- references against hand-computed and float64 values ----------------------------------------------
def test_attention_reference_matches_sdpa_float64():
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 11, 8, generator=gen, dtype=torch.float64) for _ in range(3))
    for causal in (True, False):
        ref = flash_attention.attention_reference(q, k, v, causal)
        torch.testing.assert_close(
            ref, F.scaled_dot_product_attention(q, k, v, is_causal=causal), rtol=1e-12, atol=1e-12
        )
    # causal: the first query sees only the first key, so its output is that value row
    torch.testing.assert_close(flash_attention.attention_reference(q, k, v, True)[:, :, 0], v[:, :, 0])


def test_norm_references_hand_computed():
    x = torch.tensor([[1.0, 2.0, 3.0, 6.0]], dtype=torch.float64)
    w = torch.tensor([1.0, 2.0, 1.0, 0.5], dtype=torch.float64)
    rms = math.sqrt((1 + 4 + 9 + 36) / 4)
    torch.testing.assert_close(norms.rms_norm_reference(x, w, 0.0), x / rms * w)
    mean, std = 3.0, math.sqrt((4 + 1 + 0 + 9) / 4)
    b = torch.tensor([0.0, 1.0, 0.0, -1.0], dtype=torch.float64)
    torch.testing.assert_close(norms.layer_norm_reference(x, w, b, 0.0), (x - mean) / std * w + b)


def test_cross_entropy_reference_hand_computed():
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0], [5.0, 1.0]], dtype=torch.float64)
    targets = torch.tensor([0, 1, -100])
    # row 0: log 2; row 1: -log(1/4) = log 4; row 2 ignored -> mean of two
    expected = (math.log(2.0) + math.log(4.0)) / 2
    assert cross_entropy.cross_entropy_reference(logits, targets).item() == pytest.approx(expected, rel=1e-12)
    weights = torch.tensor([0.25, 1.0, 7.0], dtype=torch.float64)
    weighted = cross_entropy.cross_entropy_reference(logits, targets, token_weights=weights).item()
    assert weighted == pytest.approx(0.25 * math.log(2.0) + math.log(4.0), rel=1e-12)
    hidden = torch.eye(2, dtype=torch.float64)[[0, 1, 0]]
    weight = logits[:2].t().contiguous()  # hidden @ weight.T reproduces rows 0 and 1
    lin = cross_entropy.linear_cross_entropy_reference(hidden[:2], weight, targets[:2]).item()
    assert lin == pytest.approx(expected, rel=1e-12)


def test_adamw_reference_matches_torch_optim_adamw():
    gen = torch.Generator().manual_seed(1)
    p0 = torch.randn(257, generator=gen, dtype=torch.float64)
    param = torch.nn.Parameter(p0.clone())
    opt = torch.optim.AdamW([param], lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    flat, m, v = p0.clone(), torch.zeros_like(p0), torch.zeros_like(p0)
    for step in range(1, 5):
        g = torch.randn(257, generator=gen, dtype=torch.float64)
        param.grad = g.clone()
        opt.step()
        optimizer_steps.adamw_step_reference(flat, g, m, v, step, 1e-2, (0.9, 0.95), 1e-8, 0.1)
        torch.testing.assert_close(flat, param.detach(), rtol=1e-13, atol=1e-15)
    assert not torch.equal(flat, p0)


def test_lion_reference_hand_computed():
    p = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)
    m = torch.tensor([0.2, 0.0, -1.0, 0.0], dtype=torch.float64)
    g = torch.tensor([-1.0, 0.5, 2.0, 0.0], dtype=torch.float64)
    lr, (b1, b2), wd = 0.1, (0.9, 0.99), 0.5
    c = b1 * m + (1 - b1) * g  # [0.08, 0.05, -0.7, 0.0]
    expected_p = p * (1 - lr * wd) - lr * torch.tensor([1.0, 1.0, -1.0, 0.0], dtype=torch.float64)
    assert torch.equal(torch.sign(c), torch.tensor([1.0, 1.0, -1.0, 0.0], dtype=torch.float64))
    expected_m = b2 * m + (1 - b2) * g
    optimizer_steps.lion_step_reference(p, g, m, lr, (b1, b2), wd)
    torch.testing.assert_close(p, expected_p, rtol=1e-15, atol=1e-15)
    torch.testing.assert_close(m, expected_m, rtol=1e-15, atol=1e-15)


# -- hardware techniques on the CPU --------------------------------------------------------------------
def make_ctx() -> TrainContext:
    workload = WORKLOADS["lm-tiny"]
    run = RunSettings(
        device=torch.device("cpu"),
        seed=0,
        batch_size=4,
        base_batch_size=4,
        seq_len=workload.seq_len,
        lr=1e-2,
        weight_decay=0.1,
        betas=(0.9, 0.95),
        warmup_frac=0.0,
        grad_clip=None,
        budget_tokens=None,
        budget_steps=10,
        budget_seconds=None,
        eval_every_tokens=1000,
        target_loss=0.0,
    )
    return TrainContext(run, workload, [])


def tiny_model(seed: int = 0, bias: bool = True) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=50, seq_len=24, n_layer=2, n_head=2, d_model=32, bias=bias))


def tiny_batch(seed: int = 0, weights: bool = False) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    inputs = torch.randint(0, 50, (3, 24), generator=gen)
    targets = torch.randint(0, 50, (3, 24), generator=gen)
    targets[0, :5] = -100
    targets[2, :] = -100 if not weights else targets[2, :]
    w = torch.tensor([0.5, 2.0, 1.0]) if weights else None
    return Batch(inputs, targets, w)


def technique(name: str, **options):
    cls = TECHNIQUES[name]
    return cls(build_config(cls, options, f"techniques.{name}"))


HARDWARE = [
    "flash_attention",
    "fused_norm",
    "fused_cross_entropy",
    "fused_optimizer",
    "block_sparse_attention",
]


@pytest.mark.parametrize("name", HARDWARE)
def test_techniques_registered_with_paper_and_category(name):
    cls = TECHNIQUES[name]
    assert cls.category.startswith("hardware/") and cls.paper
    with pytest.raises(TechniqueError, match="backend"):
        build_config(cls, {"backend": "cuda"}, f"techniques.{name}")


def test_flash_attention_technique_swaps_attn_fn_and_records_reference():
    ctx, model = make_ctx(), tiny_model()
    batch = tiny_batch()
    before = model(batch.inputs)
    technique("flash_attention").build_model(model, ctx)
    assert all(b.attn.attn_fn is flash_attention.attention_reference for b in model.blocks)
    assert ctx.run.extra["kernel_backend.flash_attention"] == "reference"
    torch.testing.assert_close(model(batch.inputs), before, rtol=1e-5, atol=1e-5)


def test_block_sparse_technique_swaps_attn_fn_records_density_and_masks():
    from benchbed.kernels import block_sparse_attention

    batch = tiny_batch()
    dense_model = tiny_model()
    dense = dense_model(batch.inputs)
    # a window covering every block: the same function as dense causal attention
    ctx, model = make_ctx(), tiny_model()
    technique("block_sparse_attention", block=16, window=8, random_blocks=0).build_model(model, ctx)
    attn = model.blocks[0].attn.attn_fn
    assert attn.func is block_sparse_attention.block_sparse_attention_reference
    assert ctx.run.extra["kernel_backend.block_sparse_attention"] == "reference"
    assert ctx.run.extra["block_sparse.density"] == 1.0
    torch.testing.assert_close(model(batch.inputs), dense, rtol=1e-5, atol=1e-5)
    # 16-token blocks, own block only: a different function
    ctx, model = make_ctx(), tiny_model()
    technique("block_sparse_attention", block=16, window=0, global_blocks=0, random_blocks=0).build_model(
        model, ctx
    )
    assert ctx.run.extra["block_sparse.density"] < 0.5
    assert not torch.allclose(model(batch.inputs), dense, atol=1e-3)
    with pytest.raises(TechniqueError, match="block"):
        build_config(TECHNIQUES["block_sparse_attention"], {"block": 24}, "techniques.block_sparse_attention")


@pytest.mark.parametrize("name", ["fp8_linear", "int8_linear"])
def test_low_precision_linear_refused_on_cpu_unless_reference(name):
    cell = {"device": "cpu", "launched": False}
    with pytest.raises(TechniqueError, match='backend = "reference"'):
        technique(name).validate(cell)
    technique(name, backend="reference").validate(cell)
    technique(name).validate({"device": "cuda", "launched": False})  # no GPU here: no capability check


@pytest.mark.parametrize("name,options", [("fp8_linear", {"scaling": "tensor"}), ("fp8_linear", {}),
                                          ("int8_linear", {})])  # fmt: skip
def test_low_precision_linear_swaps_block_linears_keeping_parameters(name, options):
    ctx, model = make_ctx(), tiny_model()
    batch = tiny_batch()
    params = dict(model.named_parameters())
    dense = model(batch.inputs)
    technique(name, backend="reference", **options).build_model(model, ctx)
    assert ctx.run.extra[f"{name}.layers"] == 8  # qkv, proj, fc, mlp.proj in each of 2 blocks
    assert type(model.blocks[0].attn.qkv).__name__ == "KernelLinear"
    assert isinstance(model.lm_head, torch.nn.Linear)  # the tied head stays
    after = dict(model.named_parameters())
    assert after.keys() == params.keys() and all(after[k] is params[k] for k in after)
    out = model(batch.inputs)
    err = (out - dense).abs().max().item()
    assert 0 < err < 0.05 * dense.abs().max().item()  # quantised, but the same function within 5%
    default_loss(model, batch).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_emulated_fp8_is_within_its_rounding_of_exact():
    """Forward error of a dot product whose operands each carry a relative error <= u:
    |err| <= 2u (|x| |W|^T) (to first order), u = 2^-4 for e4m3, computed here in float64."""
    from benchbed.kernels import quantized_linear

    gen = torch.Generator().manual_seed(3)
    x = torch.randn(17, 40, generator=gen, dtype=torch.float64)
    w = torch.randn(23, 40, generator=gen, dtype=torch.float64)
    for scaling in ("row", "tensor"):
        y = quantized_linear.fp8_linear_reference(x, w, None, scaling, acc=torch.float64)
        bound = 2.1 * 2**-4 * (x.abs() @ w.abs().t()) + 1e-3  # + subnormal flushes far below the amax
        assert ((y - x @ w.t()).abs() <= bound).all(), scaling
    y8 = quantized_linear.int8_linear_reference(x, w, None, acc=torch.float64)
    step = x.abs().amax(1, keepdim=True) / 254 * w.abs().sum(1) + x.abs().sum(1, keepdim=True) * (
        w.abs().amax(1) / 254
    )
    assert ((y8 - x @ w.t()).abs() <= 1.01 * step).all()


def test_semi_structured_sparsity_refused_without_a_gpu_and_masks_gradients():
    from benchbed.techniques.hardware import semi_structured_sparsity as sss

    with pytest.raises(TechniqueError, match="sm_80") as info:
        technique("semi_structured_sparsity").validate({"device": "cpu", "launched": False})
    assert "\n" not in str(info.value)  # one line at scenario load
    w = torch.tensor([[0.1, -3.0, 2.0, 0.5, 1.0, 0.9, -1.5, 0.2]])
    assert sss.mask_2_4(w).tolist() == [[False, True, True, False, True, False, True, False]]
    # the module on the CPU with a dense stand-in for the compressed weight
    ctx, model = make_ctx(), tiny_model()
    batch = tiny_batch()
    original = sss.SemiStructuredLinear.__init__

    def dense_stand_in(self, source, compress=None):
        original(self, source, compress=lambda weight: weight)

    sss.SemiStructuredLinear.__init__ = dense_stand_in
    try:
        technique("semi_structured_sparsity").build_model(model, ctx)
    finally:
        sss.SemiStructuredLinear.__init__ = original
    layer = model.blocks[0].mlp.fc
    assert ctx.run.extra["semi_structured.layers"] == 8
    assert (layer.weight.detach().reshape(-1, 4) != 0).sum(1).le(2).all()
    default_loss(model, batch).backward()
    assert (layer.weight.grad[~layer.mask] == 0).all() and layer.weight.grad[layer.mask].abs().sum() > 0


def test_triton_backend_on_cpu_is_refused_not_silently_interpreted():
    ctx, model = make_ctx(), tiny_model()
    with pytest.raises(TechniqueError, match="interpreter"):
        technique("flash_attention", backend="triton").build_model(model, ctx)


def test_fused_norm_keeps_the_same_parameters_and_function():
    ctx, model = make_ctx(), tiny_model()
    batch = tiny_batch()
    params_before = {name: p for name, p in model.named_parameters()}
    before = model(batch.inputs)
    technique("fused_norm").build_model(model, ctx)
    assert not any(isinstance(m, torch.nn.LayerNorm) for m in model.modules())
    assert type(model.blocks[0].norm1).__name__ == "FusedLayerNorm"
    after = dict(model.named_parameters())
    assert after.keys() == params_before.keys() and all(after[k] is params_before[k] for k in after)
    torch.testing.assert_close(model(batch.inputs), before, rtol=1e-6, atol=1e-6)
    assert ctx.run.extra["kernel_backend.layer_norm"] == "reference"


@pytest.mark.parametrize("weights", [False, True])
def test_fused_cross_entropy_loss_and_grads_equal_default_loss(weights):
    ctx, model = make_ctx(), tiny_model()
    batch = tiny_batch(weights=weights)
    reference = default_loss(model, batch)
    reference.backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    technique("fused_cross_entropy", chunk_size=7).build_model(model, ctx)
    loss = ctx.loss_fn(model, batch)
    loss.backward()
    assert loss.item() == pytest.approx(reference.item(), rel=1e-5)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref_grads[n], rtol=1e-4, atol=1e-6, msg=n)
    assert ctx.run.extra["kernel_backend.linear_cross_entropy"] == "reference"


def test_fused_optimizer_adamw_matches_torch_adamw_with_decay_groups():
    from benchbed.techniques.compute._optim import decay_groups

    ctx = make_ctx()
    # no biases: the key bias gets a gradient of pure rounding noise (softmax ignores it), which Adam
    # normalises to steps of size lr in arbitrary directions
    fused_model, plain_model = tiny_model(bias=False), tiny_model(bias=False)
    fused_params = [p for p in fused_model.parameters() if p.requires_grad]
    optimizer = technique("fused_optimizer").build_optimizer(fused_params, ctx)
    plain = torch.optim.AdamW(
        decay_groups(list(plain_model.parameters()), 0.1), lr=1e-2, betas=(0.9, 0.95), eps=1e-8
    )
    for step in range(3):
        batch = tiny_batch(seed=step)
        for model, opt in ((fused_model, optimizer), (plain_model, plain)):
            opt.zero_grad(set_to_none=True)
            default_loss(model, batch).backward()
            opt.step()
    for (name, p), q in zip(fused_model.named_parameters(), plain_model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)
    assert optimizer.state[fused_params[0]]["exp_avg"].shape == fused_params[0].shape
    assert ctx.run.extra["kernel_backend.adamw_step"] == "reference"


def test_fused_optimizer_lion_follows_the_paper_update():
    ctx = make_ctx()
    model = tiny_model()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = technique("fused_optimizer", algorithm="lion", lr=0.01, weight_decay=0.0).build_optimizer(
        params, ctx
    )
    before = [p.detach().clone() for p in params]
    default_loss(model, tiny_batch()).backward()
    grads = [p.grad.clone() for p in params]
    optimizer.step()
    for p, p0, g in zip(params, before, grads, strict=True):
        # first step, zero momentum: update = sign((1 - beta1) * g) = sign(g)
        torch.testing.assert_close(p.detach(), p0 - 0.01 * torch.sign(g), rtol=0, atol=1e-7)


def test_lion_cuda_backend_is_registered_and_says_why_it_cannot_build():
    from benchbed.kernels import cuda_lion

    assert kernels.get("lion_step", "cuda") is cuda_lion.lion_step_cuda
    assert "CUDA C++" in kernels.REGISTRY["lion_step"].description
    ok, why = cuda_lion.cuda_extension_status()
    if ok:
        pytest.skip(f"nvcc and CUDA are here ({why}): the gpu test builds the extension")
    assert why  # e.g. "torch ... is not a CUDA build", "nvcc not found"
    with pytest.raises(cuda_lion.CudaExtensionUnavailable, match="backend 'cuda'"):
        cuda_lion.lion_step_cuda(torch.zeros(3), torch.zeros(3), torch.zeros(3), 0.1, (0.9, 0.99), 0.0)
    for options, match in (
        ({"backend": "cuda"}, "lion"),
        ({"backend": "cuda", "algorithm": "adamw"}, "lion"),
    ):
        with pytest.raises(TechniqueError, match=match):
            build_config(TECHNIQUES["fused_optimizer"], options, "techniques.fused_optimizer")
    lion_cuda = technique("fused_optimizer", algorithm="lion", backend="cuda")
    with pytest.raises(TechniqueError, match="needs a CUDA device"):
        lion_cuda.validate({"device": "cpu", "launched": False})
    with pytest.raises(TechniqueError, match="cannot be built here"):
        lion_cuda.validate({"device": "cuda", "launched": True})


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_lion_cuda_extension_matches_reference_gpu(dtype):
    from benchbed.kernels import cuda_lion

    ok, why = cuda_lion.cuda_extension_status()
    if not ok:
        pytest.skip(f"CUDA C++ extension not buildable: {why}")
    gen = torch.Generator().manual_seed(4)
    n = 1_000_003
    p = torch.randn(n, generator=gen).to("cuda", dtype)
    m = torch.randn(n, generator=gen).cuda() * 0.1
    for _ in range(3):
        g = torch.randn(n, generator=gen).to("cuda", dtype)
        p64, m64 = p.double(), m.double()
        cuda_lion.lion_step_cuda(p, g, m, 1e-3, (0.9, 0.99), 0.1)
        optimizer_steps.lion_step_reference(p64, g.double(), m64, 1e-3, (0.9, 0.99), 0.1)
        torch.testing.assert_close(m.double(), m64, rtol=1e-6, atol=1e-7)
        tol = 1e-6 if dtype == torch.float32 else 2**-8
        torch.testing.assert_close(p.double(), p64, rtol=tol, atol=tol)


def test_fused_optimizer_config_is_validated():
    with pytest.raises(TechniqueError, match="algorithm"):
        build_config(TECHNIQUES["fused_optimizer"], {"algorithm": "sgd"}, "techniques.fused_optimizer")
    with pytest.raises(TechniqueError, match="chunk_size"):
        build_config(TECHNIQUES["fused_cross_entropy"], {"chunk_size": 0}, "techniques.fused_cross_entropy")
    assert TECHNIQUES["fused_optimizer"].provides_optimizer


# -- `benchbed kernels` CLI on the CPU ---------------------------------------------------------------
def test_kernels_list_cli(capsys):
    from benchbed.kernels.cli import cli_main

    assert cli_main(["list"]) == 0
    out = capsys.readouterr().out
    assert all(op in out for op in kernels.REGISTRY)


def test_kernels_bench_cli_on_cpu_writes_parquet_and_says_what_ran(tmp_path, capsys):
    import pandas as pd

    from benchbed.kernels.cli import COLUMNS, cli_main

    assert (
        cli_main(["bench", "--out", str(tmp_path), "--ops", "rms_norm,lion_step", "--repeats", "2", "--cpu"])
        == 0
    )
    err = capsys.readouterr().err
    assert "Not GPU numbers" in err and "Triton cases skipped" in err
    frame = pd.read_parquet(tmp_path / "kernels.parquet")
    assert list(frame.columns) == COLUMNS
    assert set(frame.op) == {"rms_norm", "lion_step"} and "triton" not in set(frame.backend)
    assert set(frame[frame.op == "lion_step"].backend) == {"reference", "foreach"}
    assert (frame.median_ms > 0).all() and (frame.device == "cpu").all()
    assert frame.peak_mem_bytes.isna().all()  # not measured on the CPU: NaN, never 0
    assert frame.tflops.isna().all() and (frame.gb_s > 0).all()


def test_kernels_bench_cli_interpreter_rows_are_labelled(tmp_path):
    import pandas as pd

    from benchbed.kernels.cli import cli_main

    assert (
        cli_main(
            [
                "bench",
                "--out",
                str(tmp_path),
                "--ops",
                "layer_norm",
                "--repeats",
                "1",
                "--cpu",
                "--interpreter",
            ]
        )
        == 0
    )
    frame = pd.read_parquet(tmp_path / "kernels.parquet")
    triton_rows = frame[frame.backend == "triton"]
    assert len(triton_rows) == 2 and triton_rows.note.str.contains("interpreter").all()


def test_kernels_bench_cli_bad_input(tmp_path, capsys):
    from benchbed.kernels.cli import cli_main

    assert cli_main(["bench", "--out", str(tmp_path), "--ops", "nope", "--cpu"]) == 2
    assert "--ops" in capsys.readouterr().err
    assert cli_main(["bench", "--out", str(tmp_path), "--repeats", "0"]) == 2


# -- the train loop with every hardware technique on the CPU -------------------------------------
def _train_lm_tiny(
    names: list[str], steps: int, device: str = "cpu", options: dict | None = None
) -> tuple[dict, TrainContext]:
    from benchbed.measure.telemetry import Telemetry
    from benchbed.worker.assemble import build
    from benchbed.worker.loop import train

    w = WORKLOADS["lm-tiny"]
    run = RunSettings(
        device=torch.device(device), seed=0, batch_size=8, base_batch_size=8, seq_len=w.seq_len, lr=w.lr,
        weight_decay=w.weight_decay, betas=w.betas, warmup_frac=0.0, grad_clip=w.grad_clip,
        budget_tokens=None, budget_steps=steps, budget_seconds=None, eval_every_tokens=10**9, target_loss=0.0,
        stop_at_target=False,
    )  # fmt: skip
    options = options or {}
    techniques = [
        TECHNIQUES[n](build_config(TECHNIQUES[n], options.get(n, {}), f"techniques.{n}")) for n in names
    ]
    if not any(t.provides_optimizer for t in techniques):
        techniques.append(TECHNIQUES["adamw"]())
    for t in techniques:
        t.validate({"device": device, "launched": True})
        t.configure(run)
    ctx = TrainContext(run, w, techniques)
    build(ctx)
    return train(ctx, w.make_data(), Telemetry(run.device, "test")), ctx


@pytest.mark.slow
def test_hardware_techniques_train_like_the_baseline_on_cpu():
    """On the CPU every hardware technique runs its PyTorch reference, which computes the same
    functions as the baseline model, loss and AdamW: the curves must agree (to float32 reordering)."""
    hardware = ["flash_attention", "fused_norm", "fused_cross_entropy", "fused_optimizer"]
    fused, ctx = _train_lm_tiny(hardware, steps=8)
    baseline, _ = _train_lm_tiny([], steps=8)
    first, last = fused["curves"][0]["val_loss"], fused["curves"][-1]["val_loss"]
    assert math.isfinite(last) and last < first - 0.3, (first, last)
    assert last == pytest.approx(baseline["curves"][-1]["val_loss"], rel=2e-3)
    assert {
        ctx.run.extra[f"kernel_backend.{op}"] for op in ("flash_attention", "layer_norm", "adamw_step")
    } == {"reference"}


def test_fused_optimizer_state_dict_round_trip_continues_identically():
    ctx = make_ctx()
    model_a, model_b = tiny_model(bias=False), tiny_model(seed=3, bias=False)
    opt_a = technique("fused_optimizer").build_optimizer(list(model_a.parameters()), ctx)
    opt_b = technique("fused_optimizer").build_optimizer(list(model_b.parameters()), ctx)
    for step in range(2):
        opt_a.zero_grad(set_to_none=True)
        default_loss(model_a, tiny_batch(seed=step)).backward()
        opt_a.step()
    model_b.load_state_dict(model_a.state_dict())
    opt_b.load_state_dict(opt_a.state_dict())
    first = next(iter(model_b.parameters()))
    assert opt_b.state[first]["step"] == 2.0
    # the loaded states live in the flat buffers the step updates
    assert opt_b.state[first]["exp_avg"].data_ptr() == opt_b.buckets[0][0].exp_avg.data_ptr()
    for model, opt in ((model_a, opt_a), (model_b, opt_b)):
        opt.zero_grad(set_to_none=True)
        default_loss(model, tiny_batch(seed=9)).backward()
        opt.step()
    for p, q in zip(model_a.parameters(), model_b.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


# lm-tiny has 63 tokens: 16-token blocks give the block-sparse pattern something to skip
NEW_HARDWARE_OPTIONS = {"block_sparse_attention": {"block": 16, "global_blocks": 1, "random_blocks": 1}}


@pytest.mark.slow
@pytest.mark.parametrize("names", [["block_sparse_attention"], ["fp8_linear"], ["int8_linear"]])
def test_new_hardware_techniques_train_on_cpu_with_references(names):
    options = {
        **NEW_HARDWARE_OPTIONS,
        "fp8_linear": {"backend": "reference"},
        "int8_linear": {"backend": "reference"},
    }
    result, ctx = _train_lm_tiny(names, steps=12, options=options)
    first, last = result["curves"][0]["val_loss"], result["curves"][-1]["val_loss"]
    assert math.isfinite(last) and last < first - 0.3, (first, last)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(
    "names",
    [["block_sparse_attention"], ["fp8_linear"], ["int8_linear"], ["semi_structured_sparsity"],
     ["bf16_autocast", "fp8_linear"], ["flash_attention", "fused_norm", "fused_cross_entropy"]],
)  # fmt: skip
def test_hardware_techniques_train_on_cuda(names):
    if "fp8_linear" in names and torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("fp8 needs sm_89+")
    result, ctx = _train_lm_tiny(names, steps=20, device="cuda", options=NEW_HARDWARE_OPTIONS)
    first, last = result["curves"][0]["val_loss"], result["curves"][-1]["val_loss"]
    assert math.isfinite(last) and last < first - 0.3, (first, last)
    backends = {k: v for k, v in ctx.run.extra.items() if k.startswith("kernel_backend.")}
    assert all(v == "triton" for v in backends.values()), backends
