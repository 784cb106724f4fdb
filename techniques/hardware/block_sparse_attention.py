"""Block-sparse attention (Zaheer et al. 2020, "Big Bird: Transformers for Longer Sequences";
Beltagy et al. 2020, "Longformer: The Long-Document Transformer"; Child et al. 2019, "Generating
Long Sequences with Sparse Transformers"), as one Triton kernel over a block mask
(benchbed.kernels.block_sparse_attention).

What it changes: every attention module's ``attn_fn`` becomes attention restricted to a block
pattern -- a sliding window of blocks, global blocks, optionally strided and random blocks -- on
top of the causal mask. Unlike flash_attention this changes the model: each token sees only the
allowed keys, so loss curves differ from dense attention and time-to-target is the honest metric.
Work scales with the pattern's density (recorded as ``block_sparse.density`` at the workload's
sequence length). Defaults are BigBird's ITC: 64-token blocks, three sliding blocks (window 1),
two global blocks, three random blocks. On a machine without CUDA ``auto`` runs the reference
(masked SDPA: same function, no saving) and the cell records that it did.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from benchbed.techniques.base import Technique, TechniqueError, register
from benchbed.techniques.hardware import check_backend, use_kernel


@dataclass(frozen=True)
class BlockSparseAttentionConfig:
    block: int = 64  # tokens per block (power of two >= 16)
    window: int = 1  # sliding blocks on each side (only earlier ones: the GPT is causal)
    global_blocks: int = 2  # first blocks attend to / are attended by all
    stride: int = 0  # Sparse Transformer strided blocks, (i - j) % stride == 0; 0 = off
    random_blocks: int = 3  # BigBird random key blocks per query block
    seed: int = 0  # fixes the random blocks
    backend: str = "auto"  # auto | reference | triton
    allow_tf32: bool | None = None  # fp32 inputs: TF32 dots; unset = torch's matmul setting

    def pattern(self):
        from benchbed.kernels.block_sparse_attention import SparsityPattern

        return SparsityPattern(
            self.block, self.window, self.global_blocks, self.stride, self.random_blocks, self.seed
        )

    def check(self) -> None:
        self.pattern().check()
        check_backend(self.backend)


@register
class BlockSparseAttention(Technique):
    """Attention over a BigBird/Longformer-style block mask with a block-sparse Triton kernel."""

    name = "block_sparse_attention"
    category = "hardware/sparse_matmul"
    paper = "Zaheer et al. 2020, Big Bird: Transformers for Longer Sequences"
    Config = BlockSparseAttentionConfig
    conflicts = ("flash_attention",)  # both replace attn_fn

    def build_model(self, model, ctx):
        from benchbed.kernels.block_sparse_attention import density

        pattern = self.config.pattern()
        attention = use_kernel(ctx, self.name, "block_sparse_attention", self.config.backend)
        attention = functools.partial(attention, pattern=pattern, allow_tf32=self.config.allow_tf32)
        swapped = 0
        for module in model.modules():
            if hasattr(module, "attn_fn"):
                module.attn_fn = attention
                swapped += 1
        if not swapped:
            raise TechniqueError(f"{self.name}: the model has no attention module with an 'attn_fn' seam")
        ctx.run.extra["block_sparse.density"] = round(density(ctx.run.seq_len, pattern), 4)
        return model
