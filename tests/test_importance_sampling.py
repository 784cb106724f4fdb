"""grad_norm_sampling: Katharopoulos & Fleuret's gradient-norm bound, and an unbiased estimator."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from benchbed.models.gpt import GPTConfig
from benchbed.techniques import REGISTRY, build_config
from benchbed.techniques.data.grad_norm_sampling import sample, unbiased_weighted_loss
from benchbed.worker.assemble import build_context, run_settings
from benchbed.workloads import IGNORE_INDEX, WORKLOADS, Batch

LM = WORKLOADS["lm-tiny"]


class FixedLogits(torch.nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.logits = torch.nn.Parameter(logits)

    def forward(self, inputs):
        return self.logits


def test_the_bound_by_hand_on_a_toy_batch():
    ln3 = math.log(3.0)
    logits = torch.tensor([[[0.0, ln3], [0.0, 0.0]], [[5.0, 1.0], [ln3, 0.0]]])
    targets = torch.tensor([[0, 1], [IGNORE_INDEX, 0]])
    batch = Batch(torch.zeros(2, 2, dtype=torch.long), targets)
    bound = LM.output_gradient_norm(FixedLogits(logits), batch)
    # sequence 0: p = (1/4, 3/4) with y = 0 -> |p - e_y|^2 = 9/16 + 9/16; p = (1/2, 1/2), y = 1 -> 1/2;
    # the loss is the mean over 2 tokens. Sequence 1: one scored token, p = (3/4, 1/4), y = 0 -> 1/8.
    expected = torch.tensor([math.sqrt(9 / 8 + 1 / 2) / 2, math.sqrt(1 / 8) / 1])
    assert torch.allclose(bound, expected)
    # it is exactly the norm of the per-sequence loss gradient with respect to the logits
    model = FixedLogits(logits)
    for i in range(2):
        model.zero_grad()
        LM.per_sequence_loss(model, batch)[i].backward()
        assert float(torch.linalg.vector_norm(model.logits.grad[i])) == pytest.approx(float(expected[i]))


def test_the_estimator_is_unbiased_over_many_draws():
    g = torch.Generator().manual_seed(0)
    losses = torch.rand(12, generator=g) * 3 + 0.1
    scores = losses**2 + torch.rand(12, generator=g)  # high-loss samples score high, as in training
    draws, k = 20_000, 4
    gen = torch.Generator().manual_seed(1)
    weighted, plain, mass = [], [], torch.zeros(12)
    for _ in range(draws):
        chosen, weights = sample(scores, k, gen)
        weighted.append(float((losses[chosen] * weights).mean()))
        plain.append(float(losses[chosen].mean()))
        mass.index_add_(0, chosen, weights / k)
    pool_mean = float(losses.mean())
    assert sum(weighted) / draws == pytest.approx(pool_mean, rel=0.01)
    # each sample's expected weight share is exactly 1 / N, so any per-sample quantity (a gradient) is unbiased
    assert torch.allclose(mass / draws, torch.full((12,), 1 / 12), rtol=0.05)
    # without the 1 / (N p) weights the same draws are biased toward high scores
    assert sum(plain) / draws > 1.1 * pool_mean


def small_context(options):
    workload = dataclasses.replace(
        LM, model=GPTConfig(vocab_size=13, seq_len=8, n_layer=2, n_head=2, d_model=16)
    )
    sampler = REGISTRY["grad_norm_sampling"](build_config(REGISTRY["grad_norm_sampling"], options, "t"))
    run = run_settings(workload, torch.device("cpu"), batch_size=3, budget_tokens=None, budget_steps=10)
    run.seq_len = 8
    return build_context(workload, [sampler, REGISTRY["adamw"]()], run), sampler


@pytest.mark.parametrize("score", ["grad_norm_bound", "loss"])
def test_select_batch_samples_by_the_chosen_score(score):
    ctx, sampler = small_context({"pool_factor": 4, "score": score})
    assert ctx.run.loaded_batch_size == 12 and ctx.run.batch_size == 3
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 13, (12, 8), generator=g)
    pool = Batch(x, x.roll(-1, 1))
    with torch.no_grad():
        if score == "loss":
            scores = ctx.workload.per_sequence_loss(ctx.model, pool)
        else:
            scores = ctx.workload.output_gradient_norm(ctx.model, pool)
    probs = scores / scores.sum()
    chosen = sampler.select_batch(pool, ctx)
    assert chosen.inputs.shape == (3, 8)
    for inputs, weight in zip(chosen.inputs, chosen.weights, strict=True):
        i = int((pool.inputs == inputs).all(1).nonzero()[0])
        assert float(weight) == pytest.approx(1.0 / (12 * float(probs[i])), rel=1e-5)
    assert ctx.loss_fn.func is unbiased_weighted_loss


def test_the_vit_bound_is_the_norm_of_the_logits_gradient_by_autograd():
    workload = WORKLOADS["vit-tiny"]
    torch.manual_seed(0)
    model = workload.build_model().double()
    data = workload.make_data()
    inputs, targets = data.val_batches(5, workload.seq_len, 5)[0]
    batch = Batch(inputs.double(), targets)
    bound = workload.output_gradient_norm(model, batch)
    logits = model(batch.inputs).detach().requires_grad_(True)
    for i in range(5):  # d loss_i / d logits_i by autograd, one example at a time
        (grad,) = torch.autograd.grad(
            torch.nn.functional.cross_entropy(logits[i : i + 1], targets[i : i + 1]), logits
        )
        assert float(bound[i]) == pytest.approx(float(grad[i].norm()), rel=1e-6)


def test_a_workload_without_the_bound_is_refused_at_load_unless_scoring_by_loss():
    from benchbed.techniques import TechniqueError

    cell = {"workload": "mlm-tiny", "techniques": ["grad_norm_sampling", "adamw"], "device": "cpu"}
    bound = REGISTRY["grad_norm_sampling"](build_config(REGISTRY["grad_norm_sampling"], {}, "t"))
    with pytest.raises(TechniqueError, match="no output-gradient norm"):
        bound.validate(cell)
    by_loss = REGISTRY["grad_norm_sampling"](
        build_config(REGISTRY["grad_norm_sampling"], {"score": "loss"}, "t")
    )
    by_loss.validate(cell)
