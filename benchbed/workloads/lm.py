"""GPT language-model workloads on the synthetic Markov+copy corpus (or local text / token shards).

Targets are set so the baseline (AdamW at the workload's defaults) reaches them inside the default
budget with margin, and they sit above the data's loss floor where that floor is known.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from benchbed.models.gpt import GPT, GPTConfig
from benchbed.workloads.base import Workload, register
from benchbed.workloads.batch import IGNORE_INDEX, Batch
from benchbed.workloads.data import (
    DataError,
    DataSource,
    MarkovCopySource,
    TextFileSource,
    TokenShardSource,
    check_shards,
    check_text,
)


@dataclass(frozen=True, kw_only=True)
class LanguageModelWorkload(Workload):
    """Next-token prediction with a GPT; the target is on mean validation cross-entropy (nats)."""

    model: GPTConfig
    family: str = "gpt"

    @property
    def seq_len(self) -> int:
        return self.model.seq_len

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len

    def build_model(self) -> nn.Module:
        return GPT(self.model)

    def per_sequence_loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """Mean next-token cross-entropy of each sequence over its non-ignored targets, [B]."""
        logits = model(batch.inputs)
        per_token = F.cross_entropy(
            logits.view(-1, logits.size(-1)).float(),
            batch.targets.view(-1),
            ignore_index=IGNORE_INDEX,
            reduction="none",
        ).view(batch.targets.shape)
        mask = (batch.targets != IGNORE_INDEX).float()
        return (per_token * mask).sum(1) / mask.sum(1).clamp_min(1.0)

    def output_gradient_norm(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """||d loss_i / d logits_i|| per sequence, [B], in closed form from the logits.

        For softmax cross-entropy the gradient at a token is softmax(z) - onehot(y); the sequence's
        loss is the mean over its n_i scored tokens, so the norm is
        sqrt(sum_t ||softmax(z_t) - e_{y_t}||^2) / n_i, with ||p - e_y||^2 = sum(p^2) - 2 p_y + 1.
        Ignored targets contribute nothing."""
        logits = model(batch.inputs).float()
        probs = torch.softmax(logits, dim=-1)
        targets = batch.targets
        valid = targets != IGNORE_INDEX
        p_y = probs.gather(-1, targets.clamp_min(0).unsqueeze(-1)).squeeze(-1)
        per_token = ((probs * probs).sum(-1) - 2.0 * p_y + 1.0).clamp_min(0.0) * valid
        n = valid.sum(1).clamp_min(1).to(per_token.dtype)
        return per_token.sum(1).sqrt() / n

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """Mean next-token cross-entropy over non-ignored targets; with per-sequence weights, their
        self-normalised weighted mean of per-sequence losses."""
        if batch.weights is None:
            logits = model(batch.inputs)
            return F.cross_entropy(
                logits.view(-1, logits.size(-1)).float(), batch.targets.view(-1), ignore_index=IGNORE_INDEX
            )
        return (self.per_sequence_loss(model, batch) * batch.weights).sum() / batch.weights.sum()

    @torch.no_grad()
    def evaluate(
        self,
        model: nn.Module,
        val_batches: list[tuple[torch.Tensor, torch.Tensor]],
        device: torch.device,
        autocast: Callable[[], AbstractContextManager] = nullcontext,
    ) -> float:
        was_training = model.training
        model.eval()
        total, count = torch.zeros((), dtype=torch.float64, device=device), 0
        for inputs, targets in val_batches:
            b = Batch(inputs, targets).to(device)
            n = int((targets != IGNORE_INDEX).sum())
            with autocast():
                logits = model(b.inputs)
            loss = F.cross_entropy(
                logits.view(-1, logits.size(-1)).float(), b.targets.view(-1), ignore_index=IGNORE_INDEX
            )
            total += loss.double() * n
            count += n
        model.train(was_training)
        return float(total / max(count, 1))

    def flops_per_token(self, model: nn.Module) -> float:
        inner = getattr(model, "module", model)  # parallel wrappers keep the model as .module
        fn = getattr(inner, "flops_per_token", None)
        return float(fn()) if fn is not None else math.nan

    def describe_model(self) -> str:
        m = self.model
        return f"GPT {m.n_layer}L d={m.d_model} h={m.n_head} T={m.seq_len}"

    def check_data(self, data: dict[str, Any], base_dir: str) -> None:
        kind = data.get("kind", "synthetic")
        if kind == "synthetic":
            return
        workload = self.with_data(data, base_dir)  # refuses an unknown kind or a missing path
        path = data["path"]
        full = path if os.path.isabs(path) else os.path.join(base_dir, path)
        if kind == "text":
            check_text(full, workload.seq_len)
        else:
            check_shards(full, workload.model.vocab_size, workload.seq_len)

    def with_data(self, data: dict[str, Any], base_dir: str) -> LanguageModelWorkload:
        """The workload on local data given by a scenario's [data] table (kind = text | shards)."""
        kind = data.get("kind", "synthetic")
        if kind == "synthetic":
            return self
        path = data.get("path")
        if not isinstance(path, str) or not path:
            raise DataError("data.path: a file or glob pattern is required for kind = " + repr(kind))
        full = path if os.path.isabs(path) else os.path.join(base_dir, path)
        if kind == "text":
            model = replace(self.model, vocab_size=256)
            return replace(
                self, model=model, make_data=lambda: TextFileSource(full), data_label=f"text {path}"
            )
        if kind == "shards":
            vocab = self.model.vocab_size
            return replace(self, make_data=lambda: TokenShardSource(full, vocab), data_label=f"shards {path}")
        raise DataError(f"data.kind: unknown kind {kind!r} (synthetic, text, shards)")


def _markov(vocab: int, prefix: int) -> Callable[[], DataSource]:
    return lambda: MarkovCopySource(vocab_size=vocab, prefix_len=prefix)


LM_TINY = register(
    LanguageModelWorkload(
        name="lm-tiny",
        description="2-layer GPT (d=64) on the synthetic Markov+copy corpus; one cell trains in under a minute on 2 CPU cores",
        model=GPTConfig(vocab_size=32, seq_len=63, n_layer=2, n_head=4, d_model=64),
        make_data=_markov(vocab=32, prefix=32),
        data_label="markov-copy V=32 prefix=32",
        batch_size=32,
        lr=1e-2,
        weight_decay=0.1,
        warmup_frac=0.05,
        budget_tokens=2_000_000,
        target_loss=0.70,
        eval_every_tokens=64 * 32 * 63,
        val_sequences=256,
    )
)
LM_SMALL = register(
    LanguageModelWorkload(
        name="lm-small",
        description="GPT-2-small shape (12 layers, d=768, 12 heads, T=1023) on the synthetic corpus with a 50k vocabulary; for GPUs",
        model=GPTConfig(vocab_size=50304, seq_len=1023, n_layer=12, n_head=12, d_model=768),
        make_data=_markov(vocab=50304, prefix=512),
        data_label="markov-copy V=50304 prefix=512",
        batch_size=32,
        lr=6e-4,
        weight_decay=0.1,
        warmup_frac=0.02,
        budget_tokens=100_000_000,
        # floor 0.541 nats, entropy rate 1.083: 1.0 needs the bigrams and part of the copy.
        # Provisional: set from the floor, not yet calibrated on a GPU run.
        target_loss=1.00,
        eval_every_tokens=4_000_000,
        val_sequences=256,
    )
)
