"""Fast checks of the parallel techniques' pieces (one process, no launch): refusals at load time,
the q/k/v split, the pipeline cut, clipping and layouts, the saved-activation counter, activation
offloading's block choice, and the runner keeping a row whose processes ended badly.
The multi-process training itself is in test_parallel.py (slow)."""

from __future__ import annotations

import json
import math
import os
import textwrap
from types import SimpleNamespace

import pytest
import torch

from benchbed import plan
from benchbed.measure.ranks import SavedActivations, local_bytes, rank_figures, table
from benchbed.models.gpt import GPT, CausalSelfAttention, GPTConfig
from benchbed.results import store
from benchbed.results.schema import new_row
from benchbed.run.teardown import label_teardown
from benchbed.techniques import REGISTRY, TechniqueError, build_config
from benchbed.techniques.memory import _parallel
from benchbed.techniques.memory.activation_offload import Offloaded
from benchbed.techniques.memory.pipeline_parallel import Stage, split_blocks
from benchbed.techniques.memory.tensor_parallel import SplitQKVAttention
from benchbed.worker.context import RunSettings
from benchbed.worker.loop import data_shard

CFG = GPTConfig(vocab_size=13, seq_len=8, n_layer=3, n_head=4, d_model=16)


def make(name, options=None):
    return REGISTRY[name](build_config(REGISTRY[name], options or {}, "test"))


def load(tmp_path, combos: str, extra: str = ""):
    path = tmp_path / "p.toml"
    path.write_text(
        textwrap.dedent(
            f"""
            name = "p"
            workload = "lm-tiny"
            device = "cpu"
            [budget]
            steps = 2
            [matrix]
            techniques = {combos}
            """
        )
        + textwrap.dedent(extra)
    )
    return plan.load(str(path))


# -- refusals when the scenario is loaded ----------------------------------------------------------
@pytest.mark.parametrize(
    "combos, extra, message",
    [
        ('["fsdp+data_parallel"]', "", "'fsdp' cannot be combined with 'data_parallel'"),
        ('["pipeline_parallel+tensor_parallel"]', "", "cannot be combined"),
        (
            '["tensor_parallel"]',
            "[techniques.tensor_parallel]\ndegree = 3\n",
            "does not divide the model's 4 heads",
        ),
        ('["fsdp+tensor_parallel"]', "[techniques.fsdp]\nworld_size = 3\n", "2 does not divide the cell's 3"),
        (
            '["pipeline_parallel"]',
            "[techniques.pipeline_parallel]\nmicrobatches = 5\n",
            "5 does not divide the batch size 32",
        ),
        ('["pipeline_parallel"]', "[techniques.pipeline_parallel]\nstages = 3\n", "3 stages for 2 blocks"),
        ('["pipeline_parallel+sam"]', "", "runs forward and backward itself"),
        ('["tensor_parallel+rezero"]', "", "scalar gains sit outside the layers"),
        ('["fsdp+layer_drop"]', "", "ranks must run the same blocks"),
        ('["fsdp"]', '[techniques.fsdp]\nstrategy = "hybrid_shard"\n', "hybrid_shard needs replicate >= 2"),
        ('["fsdp"]', '[techniques.fsdp]\nparam_dtype = "fp8"\n', "param_dtype: must be one of"),
        (
            '["pipeline_parallel"]',
            '[techniques.pipeline_parallel]\nschedule = "zb"\n',
            "schedule: must be one of",
        ),
    ],
)
def test_meaningless_parallel_cells_are_refused_at_load_time(tmp_path, combos, extra, message):
    with pytest.raises(plan.ScenarioError, match=message):
        load(tmp_path, combos, extra)


def test_parallel_cells_launch_as_many_processes_as_they_need(tmp_path):
    sc = load(
        tmp_path,
        '["adamw", "fsdp", "tensor_parallel", "pipeline_parallel", "fsdp+tensor_parallel", "activation_offload"]',
        '[[include]]\ntechniques = "fsdp+tensor_parallel"\n[techniques.fsdp]\nworld_size = 4\n',
    )
    worlds = {c.techniques_label: c.world_size for c in sc.cells}
    assert worlds == {
        "adamw": 1,
        "adamw+fsdp": 4,
        "adamw+tensor_parallel": 2,
        "adamw+pipeline_parallel": 2,
        "adamw+fsdp+tensor_parallel": 4,
        "activation_offload+adamw": 1,
    }


def test_pipeline_refuses_a_step_wrapper_that_would_run_inside_its_schedule(monkeypatch):
    from benchbed.techniques.base import Technique

    class KernelWithStep(Technique):
        name = "kernel_with_step"
        category = "hardware/kernels"  # after memory/parallelism in the lifecycle: inside the pipeline's step

        def train_step(self, ctx, batch, step, inner):
            return inner(batch)

    monkeypatch.setitem(REGISTRY, KernelWithStep.name, KernelWithStep)
    cell = {"device": "cpu", "batch_size": 32, "workload": "lm-tiny", "world_size": 2, "launched": False}
    pp = make("pipeline_parallel")
    with pytest.raises(TechniqueError, match="'kernel_with_step' .* would run inside the pipeline schedule"):
        pp.validate({**cell, "techniques": ["pipeline_parallel", "kernel_with_step"]})
    pp.validate(
        {**cell, "techniques": ["activation_offload", "pipeline_parallel"]}
    )  # outside: it wraps the step


@pytest.mark.skipif(os.environ.get("WORLD_SIZE") is not None, reason="runs outside torchrun")
@pytest.mark.parametrize(
    "name, option", [("fsdp", "world_size"), ("tensor_parallel", "degree"), ("pipeline_parallel", "stages")]
)
def test_a_parallel_cell_not_launched_by_torchrun_is_refused(name, option):
    cell = {"device": "cpu", "techniques": [name], "batch_size": 32, "workload": "lm-tiny", "world_size": 2}
    with pytest.raises(TechniqueError, match=rf"{name}\.{option}: .*torchrun --nproc-per-node=2"):
        make(name).validate(cell)


# -- tensor parallelism: the fused qkv ------------------------------------------------------------
def test_split_qkv_attention_computes_the_fused_attention():
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=13, seq_len=8, n_layer=1, n_head=4, d_model=16, bias=True)
    fused = CausalSelfAttention(cfg).double()
    split = SplitQKVAttention(fused)
    x = torch.randn(3, 8, 16, dtype=torch.float64, requires_grad=True)
    y_fused, y_split = fused(x), split(x)
    assert torch.allclose(y_fused, y_split, atol=1e-12)
    g_fused = torch.autograd.grad(y_fused.square().sum(), [fused.qkv.weight, fused.qkv.bias])
    g_split = torch.autograd.grad(
        y_split.square().sum(), [split.q.weight, split.k.weight, split.v.weight, split.v.bias]
    )
    assert torch.allclose(g_fused[0], torch.cat(g_split[:3]), atol=1e-12)  # rows [q; k; v]
    assert torch.allclose(g_fused[1][32:], g_split[3], atol=1e-12)
    # rank r of 2 owns heads 2r, 2r+1: its q/k/v rows are the same heads' rows of each block
    assert torch.equal(split.k.weight[8:16], fused.qkv.weight[16 + 8 : 16 + 16])


def test_tensor_parallel_refuses_a_qkv_another_technique_replaced():
    attn = CausalSelfAttention(CFG)
    attn.qkv = torch.nn.Sequential(attn.qkv)
    with pytest.raises(TechniqueError, match="not a Linear"):
        SplitQKVAttention(attn)


# -- pipeline parallelism: the cut ----------------------------------------------------------------
def test_blocks_split_into_consecutive_balanced_stages():
    assert split_blocks(12, 4) == [range(0, 3), range(3, 6), range(6, 9), range(9, 12)]
    assert split_blocks(5, 2) == [range(0, 3), range(3, 5)]
    assert [len(r) for r in split_blocks(7, 3)] == [3, 2, 2]


def test_the_stages_compose_to_the_model_with_the_head_copied():
    torch.manual_seed(0)
    model = GPT(CFG)
    x = torch.randint(0, 13, (2, 8))
    ranges = split_blocks(3, 3)
    stages = [Stage(model, r, first=i == 0, last=i == 2) for i, r in enumerate(ranges)]
    h = x
    for s in stages:
        h = s(h)
    assert torch.allclose(h, model(x), atol=1e-6)
    head = stages[-1].lm_head.weight
    assert head is not model.tok_emb.weight and torch.equal(head, model.tok_emb.weight)
    assert not hasattr(stages[1], "tok_emb") and not hasattr(stages[1], "lm_head")


# -- clipping and layouts -----------------------------------------------------------------------------
def test_clip_grad_norm_of_plain_tensors_is_torchs():
    torch.manual_seed(0)
    a = [torch.nn.Parameter(torch.randn(5, 3)) for _ in range(3)]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    for p, q in zip(a, b, strict=True):
        p.grad = torch.randn_like(p) * 3
        q.grad = p.grad.clone()
    ours = _parallel.clip_grad_norm(a, 1.0)
    theirs = torch.nn.utils.clip_grad_norm_(b, 1.0)
    assert torch.allclose(ours, theirs)
    for p, q in zip(a, b, strict=True):
        assert torch.allclose(p.grad, q.grad)


def test_clip_sums_a_sharded_gradient_over_every_split_mesh_dimension():
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.placement_types import _StridedShard

    mesh = SimpleNamespace(get_group=lambda dim: f"group{dim}")
    two_d = SimpleNamespace(placements=(_StridedShard(0, split_factor=2), Shard(0)), device_mesh=mesh)
    assert _parallel._groups_to_sum(two_d) == ["group0", "group1"]  # FSDP's strided shard counts too
    replicated_on_tp = SimpleNamespace(placements=(Shard(0), Replicate()), device_mesh=mesh)
    assert _parallel._groups_to_sum(replicated_on_tp) == ["group0"]


def _run(world, rank):
    return RunSettings(
        device=torch.device("cpu"), seed=0, batch_size=4, base_batch_size=4, seq_len=8, lr=1e-3,
        weight_decay=0.0, betas=(0.9, 0.95), warmup_frac=0.0, grad_clip=None, budget_tokens=4096,
        budget_steps=None, budget_seconds=None, eval_every_tokens=10**9, target_loss=0.0,
        world_size=world, rank=rank,
    )  # fmt: skip


def test_layout_puts_tensor_parallel_ranks_of_a_replica_side_by_side():
    runs = [_run(4, r) for r in range(4)]
    for run in runs:
        _parallel.declare(run)
        assert run.extra["parallel"] == {"world": 4, "dp": 4, "tp": 1, "pp": 1}
        _parallel.declare(run, tp=2)
    assert [r.dp_rank for r in runs] == [0, 0, 1, 1] and all(r.dp_size == 2 for r in runs)
    assert runs[0].global_batch_size == 8 and runs[0].tokens_per_step == 64
    assert runs[0].total_steps == 4096 // 64  # the budget counts global tokens
    with pytest.raises(TechniqueError, match="does not divide 4 processes"):
        _parallel.declare(_run(4, 0), tp=3)


def test_data_parallel_ranks_slice_the_global_batch_a_single_process_reads():
    g = torch.Generator().manual_seed(0)
    stream = [
        (torch.randint(0, 9, (6, 5), generator=g), torch.randint(0, 9, (6, 5), generator=g)) for _ in range(2)
    ]
    shards = [list(data_shard(iter(stream), r, 2)) for r in range(3)]
    for step, (inputs, targets) in enumerate(stream):
        assert torch.equal(torch.cat([s[step][0] for s in shards]), inputs)
        assert torch.equal(torch.cat([s[step][1] for s in shards]), targets)


# -- saved activations ----------------------------------------------------------------------------------
def test_saved_activations_counts_the_peak_of_live_saved_bytes_not_parameters():
    w = torch.nn.Parameter(torch.randn(100, 100))
    x = torch.randn(10, 100, requires_grad=True)
    with SavedActivations(torch.device("cpu")) as saved:
        h = x @ w  # saves x (4000 B) and w (a parameter: not counted)
        y = torch.tanh(h)  # saves its output y (4000 B)
        z = (y * y).sum()  # saves y again: the same storage, counted once
        assert saved.live == 8000
        z.backward()
    assert saved.peak == 8000
    assert saved.live == 0  # backward freed them all


def test_saved_activations_do_not_see_what_an_inner_region_keeps_elsewhere():
    x = torch.randn(10, 100, requires_grad=True)
    with SavedActivations(torch.device("cpu")) as saved:
        with torch.autograd.graph.saved_tensors_hooks(lambda t: t.clone(), lambda t: t):
            torch.tanh(x).sum().backward()
        torch.tanh(x).sum().backward()
    assert saved.peak == 4000  # only the outer tanh's output


def test_rank_figures_count_what_this_rank_holds():
    model = torch.nn.Linear(10, 10, bias=False)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 10)).sum().backward()
    opt.step()
    fig = rank_figures(model, opt, 123.0, torch.device("cpu"), rank=3, extra={"stage_blocks": "0-1"})
    assert fig["param_bytes"] == fig["grad_bytes"] == 400
    assert fig["optimizer_state_bytes"] == 800 + local_bytes(opt.state[model.weight]["step"])
    assert fig["saved_activation_bytes"] == 123.0 and fig["rank"] == 3 and math.isnan(fig["peak_mem_bytes"])
    text = table([fig, {**fig, "rank": 4}])
    assert "param_MiB" in text and "stage_blocks" in text and len(text.splitlines()) == 3


# -- activation offloading ------------------------------------------------------------------------------
def test_activation_offload_takes_every_nth_block_left_by_checkpointing_and_is_inactive_on_a_cpu():
    import dataclasses

    from benchbed.worker.assemble import build
    from benchbed.worker.context import TrainContext
    from benchbed.workloads import WORKLOADS

    workload = dataclasses.replace(WORKLOADS["lm-tiny"], model=CFG)
    techniques = [make("activation_checkpointing", {"every": 2}), make("activation_offload"), make("adamw")]
    ctx = TrainContext(_run(1, 0), workload, techniques)
    build(ctx)
    note = ctx.run.extra["activation_offload"]
    assert note["skipped_checkpointed"] == [0, 2] and note["blocks"] == [1]
    assert note["active"] is False and "host memory" in note["why_inactive"]
    assert not any(isinstance(b, Offloaded) for b in ctx.model.blocks)  # no hooks on a CPU


def test_offloaded_block_computes_the_same_gradients():
    torch.manual_seed(0)
    block = GPT(CFG).blocks[0]
    counter = {"on": True, "bytes": 0}
    wrapped = Offloaded(block, pin_memory=False, counter=counter)
    x = torch.randn(2, 8, 16, requires_grad=True)
    g_plain = torch.autograd.grad(block(x).square().sum(), [x, *block.parameters()])
    g_off = torch.autograd.grad(wrapped(x).square().sum(), [x, *block.parameters()])
    for a, b in zip(g_plain, g_off, strict=True):
        assert torch.allclose(a, b)
    assert counter["bytes"] == 0  # host tensors are not moved (nor counted) on a CPU


# -- a row written before the processes ended badly ----------------------------------------------------
def test_a_row_written_before_a_bad_exit_is_kept_and_labelled(tmp_path):
    part = tmp_path / store.PARTS / "c1"
    row = new_row(cell_id="c1", status="budget_exhausted", final_val_loss=1.5)
    store.write_part(tmp_path, "c1", row, None, None)
    kept = label_teardown(part, json.loads((part / "row.json").read_text()), "exit code 1; stderr tail: boom")
    assert kept["status"] == "budget_exhausted" and kept["final_val_loss"] == 1.5
    assert kept["teardown_error"] == "exit code 1; stderr tail: boom"
    assert json.loads((part / "row.json").read_text())["teardown_error"].startswith("exit code 1")
    # a failure the cell recorded itself stays as it wrote it
    store.write_part(tmp_path, "c1", new_row(cell_id="c1", status="error", error="bad data"), None, None)
    own = label_teardown(part, json.loads((part / "row.json").read_text()), "exit code 1")
    assert own["status"] == "error" and own["teardown_error"] is None
    assert json.loads((part / "row.json").read_text())["teardown_error"] is None
