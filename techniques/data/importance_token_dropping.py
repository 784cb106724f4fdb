"""Token dropping in the middle layers of a BERT (Hou et al. 2022, "Token Dropping for Efficient BERT
Pretraining", ACL), checked against the authors' reference encoder.

What it changes: which tokens the middle blocks of an mlm workload's encoder process in training.
Each step, every input token gets an importance: a running average, per vocabulary id, of the
masked-language-model loss that id had as a target (``beta`` = 0.995 per step, ``init_loss`` = 10
for ids not yet seen, both the reference's defaults); [MASK] is always kept (the reference's allow
list). The ``keep_frac`` most important tokens of each sequence (the reference keeps 256 of 512)
run through the middle blocks and the rest skip them: all tokens run through the first
``L/2 - 1`` blocks, block ``L/2 - 1`` runs the kept tokens attending to every token, the blocks up
to the last run the kept tokens only, and every token runs through the last block
(``Encoder.hidden``). Evaluation runs the full sequence. Ties in importance (every id starts at
``init_loss``) are broken at random, not by position.

Where the saving is: the middle blocks' tensors have ``keep_frac * T`` tokens instead of T, so
their matmuls and attention shrink; with 4 blocks and half the tokens kept, about a quarter of the
blocks' work goes (blocks 1 and 2 of 0..3 run on half the queries; block 1 still projects keys
and values for all). The measured FLOPs per token show it; the formula column does not.

Charged: the importance lookup, the top-k and the running-average update run inside the step. The
importance update reads the per-token losses the training loss already computed (no extra
forward). The update is once per step with each id's mean loss in the batch (the reference
updates per occurrence; with duplicate ids in a batch its last write wins).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from benchbed.techniques.base import Technique, TechniqueError, register, require_family
from benchbed.workloads import IGNORE_INDEX, WORKLOADS

ALWAYS_KEEP = 1e4  # the reference's importance for allow-listed ids ([MASK], [CLS], [SEP])


@dataclass(frozen=True)
class ImportanceTokenDroppingConfig:
    keep_frac: float = 0.5  # tokens kept in the middle blocks (the reference: 256 of 512)
    beta: float = 0.995  # running-average factor of each id's loss
    init_loss: float = 10.0  # importance of an id before it was ever a target

    def check(self) -> None:
        if not 0.0 < self.keep_frac < 1.0:
            raise ValueError(f"keep_frac: must be in (0, 1), got {self.keep_frac}")
        if not 0.0 <= self.beta < 1.0:
            raise ValueError(f"beta: must be in [0, 1), got {self.beta}")


@register
class ImportanceTokenDropping(Technique):
    """Hou et al. token dropping: the middle blocks of a BERT run only the tokens with the highest running loss."""

    name = "importance_token_dropping"
    category = "data/token_masking"
    paper = "Hou et al. 2022, Token Dropping for Efficient BERT Pretraining"
    Config = ImportanceTokenDroppingConfig
    families = ("bert",)
    # both replace the training loss function (this one to read the per-token losses)
    conflicts = ("grad_norm_sampling", "fused_cross_entropy")

    def __init__(self, config=None):
        super().__init__(config)
        self.importance: torch.Tensor | None = None  # [input vocabulary]
        self.mask_id = -1
        self.generator: torch.Generator | None = None

    def validate(self, cell):
        require_family(self, cell)
        workload = WORKLOADS.get(cell.get("workload", ""))
        if workload is not None and workload.model.n_layer < 2:
            raise TechniqueError(
                f"techniques.{self.name}: needs at least 2 blocks (dropping ones, then the last on every "
                f"token); '{workload.name}' has {workload.model.n_layer}"
            )

    def configure(self, run):
        run.extra["token_keep_frac"] = self.config.keep_frac

    def build_model(self, model, ctx):
        workload = ctx.workload
        self.mask_id = workload.mask_id
        self.importance = torch.full((workload.model.vocab_size,), self.config.init_loss, device=ctx.device)
        self.importance[self.mask_id] = ALWAYS_KEEP
        self.generator = torch.Generator(device=ctx.device)
        self.generator.manual_seed(ctx.run.seed + 4)
        model.select_tokens = self.select
        ctx.run.extra["tokens_kept_in_middle_blocks"] = self.kept(workload.seq_len)
        ctx.run.extra["dropping_blocks"] = list(model.drop_layers())

        def loss_fn(m, batch):
            per_token = workload.per_token_loss(m, batch)
            if m.training:
                self.record(batch.targets, per_token.detach())
            return workload.reduce(per_token, batch)

        ctx.loss_fn = loss_fn
        return model

    def kept(self, seq_len: int) -> int:
        return max(1, round(self.config.keep_frac * seq_len))

    @torch.no_grad()
    def select(self, idx: torch.Tensor) -> torch.Tensor:
        """Positions [B, K] of the K most important tokens of each sequence, in sequence order."""
        score = self.importance[idx]
        score = score + 1e-6 * torch.rand(idx.shape, generator=self.generator, device=idx.device)
        keep = score.topk(self.kept(idx.shape[1]), dim=1).indices
        return keep.sort(dim=1).values

    @torch.no_grad()
    def record(self, targets: torch.Tensor, per_token: torch.Tensor) -> None:
        """importance[id] <- beta importance[id] + (1 - beta) (mean loss of id in this batch)."""
        selected = targets != IGNORE_INDEX
        ids, losses = targets[selected], per_token[selected].float()
        n = self.importance.numel()
        sums = torch.zeros(n, device=ids.device).index_add_(0, ids, losses)
        counts = torch.zeros(n, device=ids.device).index_add_(0, ids, torch.ones_like(losses))
        seen = counts > 0
        seen[self.mask_id] = False
        beta = self.config.beta
        mean = sums / counts.clamp_min(1.0)
        self.importance = torch.where(seen, beta * self.importance + (1 - beta) * mean, self.importance)
