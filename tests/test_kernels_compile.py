"""The attention kernels as torch.library custom ops: torch.compile traces a model step through them
without a graph break (fullgraph=True), on the CPU path (the reference implementation inside the op),
with results and gradients equal to eager; torch.library.opcheck validates schema, fake tensors
and the autograd registration."""

from __future__ import annotations

import pytest
import torch

from benchbed.kernels import block_sparse_attention, custom_ops, flash_attention

PATTERN = block_sparse_attention.SparsityPattern(block=16, window=1, global_blocks=1, random_blocks=1)


def _inputs(seed=0, shape=(2, 3, 40, 16)):
    gen = torch.Generator().manual_seed(seed)
    qkv = torch.randn(shape[0], shape[2], 3 * shape[1] * shape[3], generator=gen)
    width = shape[1] * shape[3]
    # the GPT's layout: transposed views of one projection
    return [t.view(shape[0], shape[2], shape[1], shape[3]).transpose(1, 2) for t in qkv.split(width, 2)]


CASES = [
    ("flash_attention", lambda q, k, v: custom_ops.flash_attention(q, k, v, True),
     lambda q, k, v: flash_attention.attention_reference(q, k, v, True)),
    ("block_sparse_attention", lambda q, k, v: custom_ops.block_sparse_attention(q, k, v, True, PATTERN),
     lambda q, k, v: block_sparse_attention.block_sparse_attention_reference(q, k, v, True, PATTERN)),
]  # fmt: skip


@pytest.mark.parametrize("name,op,reference", CASES, ids=[c[0] for c in CASES])
def test_custom_op_compiles_without_graph_breaks_and_matches_eager(name, op, reference):
    def step(q, k, v):
        out = op(q, k, v)
        return (out * out).sum()

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    leaves = [t.detach().clone().requires_grad_(True) for t in _inputs()]
    loss = compiled(*leaves)
    loss.backward()
    ref_leaves = [t.detach().clone().requires_grad_(True) for t in _inputs()]
    ref = reference(*ref_leaves)
    (ref * ref).sum().backward()
    torch.testing.assert_close(loss, (ref * ref).sum(), rtol=1e-5, atol=1e-5)
    for got, want in zip(leaves, ref_leaves, strict=True):
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-4, atol=1e-5)


def test_opcheck_attention_ops():
    q, k, v = (t.contiguous().requires_grad_(True) for t in _inputs(shape=(1, 2, 24, 16)))
    torch.library.opcheck(custom_ops.flash_attention_fwd, (q, k, v, True, False))
    fields = [16, 1, 1, 0, 0, 0]
    torch.library.opcheck(custom_ops.block_sparse_attention_fwd, (q, k, v, True, fields, False))
