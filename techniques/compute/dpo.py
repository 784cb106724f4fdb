"""Direct Preference Optimization (Rafailov et al. 2023, "Direct Preference Optimization: Your
Language Model is Secretly a Reward Model", NeurIPS), driven by a learned reward model.

What it changes: the policy stage's loss (``rlhf-tiny``). Each step takes B prompts, samples two
responses to each from the reference policy (the paper's offline setting: pairs from pi_ref;
``sample_from = "policy"`` samples from the current policy instead, online), ranks each pair with
stage 1's frozen reward model -- which replaces the human, as in RLHF -- and minimises

    L = -log sigmoid( beta [ (log pi(y_w|x) - log pi_ref(y_w|x)) - (log pi(y_l|x) - log pi_ref(y_l|x)) ] )

(the paper's equation 7; `dpo_loss`, which a test checks against a hand-computed value). The
reference policy is the frozen starting point (the pretrained base); its log-probabilities, the
sampling and the reward model's scoring all run inside the step, so time-to-target charges them.
No value network and no on-policy rollouts are needed: that is DPO's saving over PPO.

The target is on the true (hidden) reward of the policy's own samples; ``kl_to_reference`` in
the row says how far from the reference the policy went to get there.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from benchbed.techniques.base import Technique, TechniqueError, register
from benchbed.workloads import WORKLOADS
from benchbed.workloads.rlhf import generate, response_logprobs


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """Mean DPO loss over pairs from the sequence log-probabilities of each response."""
    margin = (policy_chosen - reference_chosen) - (policy_rejected - reference_rejected)
    return -F.logsigmoid(beta * margin).mean()


@dataclass(frozen=True)
class DPOConfig:
    beta: float = 0.1  # the paper's default KL strength
    sample_from: Literal["reference", "policy"] = "reference"

    def check(self) -> None:
        if self.beta <= 0:
            raise ValueError(f"beta: must be positive, got {self.beta}")
        if self.sample_from not in ("reference", "policy"):
            raise ValueError(f"sample_from: 'reference' or 'policy', got {self.sample_from!r}")


@register
class DPO(Technique):
    """DPO against a learned reward model: pairs sampled, ranked by the reward model, DPO loss."""

    name = "dpo"
    category = "compute/rlhf"
    paper = (
        "Rafailov et al. 2023, Direct Preference Optimization: Your Language Model is Secretly a Reward Model"
    )
    Config = DPOConfig

    def __init__(self, config=None):
        super().__init__(config)
        self.reference = None
        self.reward_model = None
        self.generator: torch.Generator | None = None

    def validate(self, cell):
        workload = WORKLOADS.get(cell.get("workload", ""))
        if workload is not None and not hasattr(workload, "reward_stage"):
            raise TechniqueError(
                f"techniques.dpo: tunes a policy against a reward model; workload '{workload.name}' has none (use rlhf-tiny)"
            )

    def build_model(self, model, ctx):
        workload = ctx.workload
        self.task = workload.task
        self.reference = copy.deepcopy(model).eval()  # before any adapter: the reference is the base
        for p in self.reference.parameters():
            p.requires_grad_(False)
        self.reward_model = workload.reward_model(ctx.device)
        self.generator = torch.Generator(device=ctx.device).manual_seed(ctx.run.seed * 7919 + 1)
        ctx.loss_fn = self.loss
        return model

    def loss(self, model, batch):
        task, P = self.task, self.task.prompt_len
        prompts = batch.inputs
        sampler = self.reference if self.config.sample_from == "reference" else model
        with torch.no_grad():  # (the GPT has no dropout: sampling in training mode is sampling)
            both = generate(sampler, prompts.repeat(2, 1), task.response_len, self.generator)
            scores = self.reward_model(both).float().view(2, -1)
            first_wins = (scores[0] >= scores[1])[:, None]
            a, b = both.view(2, prompts.shape[0], -1)
            chosen, rejected = torch.where(first_wins, a, b), torch.where(first_wins, b, a)
            pair = torch.cat([chosen, rejected])
            ref = response_logprobs(self.reference, pair, P).view(2, -1)
        pol = response_logprobs(model, pair, P).view(2, -1)
        return dpo_loss(pol[0], pol[1], ref[0], ref[1], self.config.beta)
