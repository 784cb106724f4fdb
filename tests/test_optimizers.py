"""One step of each optimizer on small float64 tensors against a hand-computed update."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from benchbed.models.gpt import GPT, GPTConfig
from benchbed.techniques import REGISTRY, build_config
from benchbed.techniques.compute.lamb import LAMBOptimizer
from benchbed.techniques.compute.lars import LARSOptimizer
from benchbed.techniques.compute.lion import LION_LR_RATIO
from benchbed.techniques.compute.sam import sam_perturbation
from benchbed.worker.context import RunSettings, TrainContext, default_step
from benchbed.workloads import Batch

D = torch.float64


def run_settings(**overrides) -> RunSettings:
    values = dict(
        device=torch.device("cpu"), seed=0, batch_size=4, base_batch_size=4, seq_len=8, lr=0.01, weight_decay=0.1,
        betas=(0.9, 0.95), warmup_frac=0.0, grad_clip=None, budget_tokens=None, budget_steps=10,
        budget_seconds=None, eval_every_tokens=10**9, target_loss=0.0,
    )  # fmt: skip
    values.update(overrides)
    return RunSettings(**values)


class FakeCtx:
    def __init__(self, run):
        self.run, self.device = run, run.device


def matrix_and_vector():
    w = torch.nn.Parameter(torch.tensor([[0.5, -1.0], [2.0, 0.25]], dtype=D))
    b = torch.nn.Parameter(torch.tensor([0.3, -0.2], dtype=D))
    w.grad = torch.tensor([[0.1, 0.2], [-0.3, 0.4]], dtype=D)
    b.grad = torch.tensor([-0.05, 0.5], dtype=D)
    return w, b


def build(name, params, options=None, **run_overrides):
    technique = REGISTRY[name](build_config(REGISTRY[name], options or {}, "test"))
    return technique.build_optimizer(params, FakeCtx(run_settings(**run_overrides)))


# -- Lion ------------------------------------------------------------------------------------------
def test_lion_two_steps_match_the_paper_update():
    w, b = matrix_and_vector()
    w0, b0, g1 = w.detach().clone(), b.detach().clone(), w.grad.clone()
    opt = build("lion", [w, b], {"lr": 0.1, "weight_decay": 0.5})
    opt.step()
    # step 1: m = 0, c = (1 - beta1) g, decay on the old theta (matrices only)
    assert torch.allclose(w.detach(), w0 - 0.1 * (torch.sign(g1) + 0.5 * w0))
    assert torch.allclose(b.detach(), b0 - 0.1 * torch.sign(b.grad))
    m = (1 - 0.99) * g1
    w1 = w.detach().clone()
    g2 = torch.tensor([[-0.2, 0.001], [0.3, -0.0001]], dtype=D)
    w.grad = g2
    opt.step()
    c = 0.9 * m + 0.1 * g2  # sign(c) differs from sign(g2) where the momentum dominates
    assert torch.allclose(w.detach(), w1 - 0.1 * (torch.sign(c) + 0.5 * w1))
    assert torch.allclose(opt.state[w]["exp_avg"], 0.99 * m + 0.01 * g2)


def test_lion_defaults_follow_the_paper_ratios():
    w, b = matrix_and_vector()
    opt = build("lion", [w, b], lr=0.01, weight_decay=0.1)
    lr_ratio = REGISTRY["lion"].Config().lr_ratio
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01 * lr_ratio)
    assert opt.param_groups[0]["weight_decay"] == pytest.approx(0.1 / lr_ratio)  # same lr * lambda
    assert opt.param_groups[0]["betas"] == (0.9, 0.99)
    assert opt.param_groups[1]["weight_decay"] == 0.0


# -- Nesterov ----------------------------------------------------------------------------------------
def test_nesterov_first_step_is_g_plus_mu_g():
    w, b = matrix_and_vector()
    w0, g = w.detach().clone(), w.grad.clone()
    opt = build("nesterov", [w, b], {"lr_ratio": 10.0}, lr=0.01)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)
    opt.step()
    assert torch.allclose(w.detach(), w0 - 0.1 * (g + 0.9 * g))  # buffer = g, update = g + mu * buffer


# -- LARS --------------------------------------------------------------------------------------------
def test_lars_trust_ratio_and_momentum_match_algorithm_1():
    w, b = matrix_and_vector()
    w0, b0, g = w.detach().clone(), b.detach().clone(), w.grad.clone()
    eta, beta, lr, mom = 0.001, 0.01, 2.0, 0.9
    opt = build("lars", [w, b], {"lr": lr, "trust_coefficient": eta, "weight_decay": beta, "momentum": mom})
    opt.step()
    ratio = eta * w0.norm() / (g.norm() + beta * w0.norm())
    v = lr * ratio * (g + beta * w0)
    assert torch.allclose(w.detach(), w0 - v)
    # dim < 2: no trust ratio, no decay, and the run's lr (0.01), not the large global rate
    assert torch.allclose(b.detach(), b0 - 0.01 * b.grad)
    w1 = w.detach().clone()
    g2 = torch.tensor([[0.3, -0.1], [0.0, 0.2]], dtype=D)
    w.grad = g2
    opt.step()
    ratio2 = eta * w1.norm() / (g2.norm() + beta * w1.norm())
    assert torch.allclose(w.detach(), w1 - (mom * v + lr * ratio2 * (g2 + beta * w1)))


def test_lars_trust_ratio_is_one_for_a_zero_weight():
    zero, g = torch.zeros(2, 2, dtype=D), torch.ones(2, 2, dtype=D)
    assert float(LARSOptimizer.trust_ratio(zero, g, 0.001, 0.1)) == 1.0
    assert float(LARSOptimizer.trust_ratio(g, torch.zeros_like(g), 0.001, 0.1)) == 1.0


# -- LAMB --------------------------------------------------------------------------------------------
def test_lamb_two_steps_match_algorithm_2():
    w, b = matrix_and_vector()
    lr, b1, b2, eps, wd = 0.01, 0.9, 0.999, 1e-6, 0.1
    opt = build("lamb", [w, b], {"lr": lr, "beta1": b1, "beta2": b2, "weight_decay": wd})
    m = torch.zeros_like(w.detach())
    v = torch.zeros_like(w.detach())
    mb, vb = torch.zeros_like(b.detach()), torch.zeros_like(b.detach())
    grads = [
        (w.grad.clone(), b.grad.clone()),
        (torch.tensor([[0.2, -0.4], [0.1, 0.0]], dtype=D), b.grad * -2),
    ]
    for t, (g, gb) in enumerate(grads, start=1):
        w.grad, b.grad = g.clone(), gb.clone()
        w_prev, b_prev = w.detach().clone(), b.detach().clone()
        opt.step()
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        r = (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + eps) + wd * w_prev
        assert torch.allclose(w.detach(), w_prev - lr * (w_prev.norm() / r.norm()) * r)
        mb, vb = b1 * mb + (1 - b1) * gb, b2 * vb + (1 - b2) * gb * gb
        rb = (mb / (1 - b1**t)) / ((vb / (1 - b2**t)).sqrt() + eps)  # dim < 2: no decay, ratio 1
        assert torch.allclose(b.detach(), b_prev - lr * rb)


def test_lamb_trust_ratio_is_one_when_either_norm_is_zero():
    x = torch.ones(3, dtype=D)
    assert float(LAMBOptimizer.trust_ratio(torch.zeros(3, dtype=D), x)) == 1.0
    assert float(LAMBOptimizer.trust_ratio(x, torch.zeros(3, dtype=D))) == 1.0
    assert float(LAMBOptimizer.trust_ratio(2 * x, x)) == pytest.approx(2.0)


# -- common properties ------------------------------------------------------------------------------
OPTIMIZERS = ["adamw", "nesterov", "lion", "lars", "lamb"]


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_parameters_without_gradients_are_untouched(name):
    w, b = matrix_and_vector()
    frozen = torch.nn.Parameter(torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=D))
    before = frozen.detach().clone()
    opt = build(name, [w, b, frozen])
    w_before = w.detach().clone()
    opt.step()
    assert torch.equal(frozen.detach(), before)
    assert not torch.equal(w.detach(), w_before)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_state_dict_round_trips(name):
    w, b = matrix_and_vector()
    opt = build(name, [w, b])
    opt.step()
    w2, b2 = torch.nn.Parameter(w.detach().clone()), torch.nn.Parameter(b.detach().clone())
    opt2 = build(name, [w2, b2])
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))
    for p in (w, b, w2, b2):
        p.grad = torch.full_like(p, 0.3)
    opt.step()
    opt2.step()
    assert torch.allclose(w.detach(), w2.detach()) and torch.allclose(b.detach(), b2.detach())


# -- SAM ---------------------------------------------------------------------------------------------
def test_sam_perturbation_has_norm_rho_along_the_gradient():
    w, b = matrix_and_vector()
    eps = sam_perturbation([w, b], rho=0.05)
    total = math.sqrt(sum(float(e.norm()) ** 2 for e in eps))
    assert total == pytest.approx(0.05)
    g_norm = math.sqrt(float(w.grad.norm()) ** 2 + float(b.grad.norm()) ** 2)
    assert torch.allclose(eps[0], 0.05 * w.grad / g_norm)


def test_asam_perturbation_is_t_squared_g_with_norm_rho_in_the_normalised_space():
    w, b = matrix_and_vector()
    none = torch.nn.Parameter(torch.ones(2, dtype=D))  # no gradient: no perturbation
    eps = sam_perturbation([w, b, none], rho=0.5, adaptive=True, eta=0.01)
    assert eps[2] is None
    t_w, t_b = w.detach().abs() + 0.01, b.detach().abs() + 0.01
    tg_norm = math.sqrt(float((t_w * w.grad).norm()) ** 2 + float((t_b * b.grad).norm()) ** 2)
    assert torch.allclose(eps[0], 0.5 * t_w**2 * w.grad / tg_norm)
    normalised = math.sqrt(float((eps[0] / t_w).norm()) ** 2 + float((eps[1] / t_b).norm()) ** 2)
    assert normalised == pytest.approx(0.5)


def _tiny_model():
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=11, seq_len=6, n_layer=1, n_head=2, d_model=8)).double()


def _loss64(model, batch):
    logits = model(batch.inputs)
    return torch.nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), batch.targets.view(-1))


@pytest.mark.parametrize("grad_clip", [None, 0.01])
def test_sam_step_updates_theta_with_the_clipped_gradient_of_the_perturbed_point(grad_clip):
    rho, lr = 0.05, 0.1
    model = _tiny_model()
    g = torch.Generator().manual_seed(1)
    batch = Batch(torch.randint(0, 11, (3, 6), generator=g), torch.randint(0, 11, (3, 6), generator=g))
    # reference: ascend along g / ||g||, gradient there, (clip), plain SGD step from the original theta
    ref = copy.deepcopy(model)
    _loss64(ref, batch).backward()
    params = list(ref.parameters())
    grads = [p.grad.clone() for p in params]
    g_norm = torch.sqrt(sum((gr**2).sum() for gr in grads))
    theta0 = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, gr in zip(params, grads, strict=True):
            p.add_(rho * gr / g_norm)
    ref.zero_grad()
    _loss64(ref, batch).backward()
    perturbed = [p.grad.clone() for p in params]
    if grad_clip:
        total = torch.sqrt(sum((gr**2).sum() for gr in perturbed))
        perturbed = [gr * min(1.0, grad_clip / (float(total) + 1e-6)) for gr in perturbed]
    expected = [t - lr * gr for t, gr in zip(theta0, perturbed, strict=True)]

    ctx = TrainContext(run_settings(grad_clip=grad_clip), workload=None, techniques=[])
    ctx.model, ctx.loss_fn = model, _loss64
    ctx.optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    sam = REGISTRY["sam"](build_config(REGISTRY["sam"], {"rho": rho}, "test"))

    loss = sam.train_step(ctx, batch, 0, lambda b: default_step(ctx, b))
    with torch.no_grad():
        at_theta = float(_loss64(_tiny_model(), batch))
    assert float(loss) == pytest.approx(at_theta)  # the loss at theta, not at theta + eps
    for p, e in zip(model.parameters(), expected, strict=True):
        assert torch.allclose(p.detach(), e, atol=1e-12)


def test_sam_is_not_an_optimizer():
    assert not REGISTRY["sam"].provides_optimizer


# -- learning rates fixed by hand (LARS's excluded tensors, one Lion ratio) --------------------------
def make(name, **options):
    return REGISTRY[name](build_config(REGISTRY[name], options, f"techniques.{name}"))


def test_lars_gives_excluded_tensors_the_run_lr_and_matrices_the_large_rate():
    w = torch.nn.Parameter(torch.full((2, 2), 2.0))
    b = torch.nn.Parameter(torch.ones(3))
    opt = make("lars", weight_decay=0.0, momentum=0.9).build_optimizer(
        [w, b], FakeCtx(run_settings(weight_decay=0.0))
    )
    matrices, vectors = opt.param_groups
    assert matrices["adapt"] and matrices["lr"] == pytest.approx(300 * 0.01)
    assert not vectors["adapt"] and vectors["lr"] == pytest.approx(0.01)  # was 3.0: 300x the run's lr
    w.grad = torch.full((2, 2), 0.5)
    b.grad = torch.tensor([1.0, -2.0, 0.5])
    opt.step()
    # vector: plain momentum SGD at 0.01, first step v = lr * g
    assert torch.allclose(b, torch.tensor([1.0 - 0.01, 1.0 + 0.02, 1.0 - 0.005]))
    # matrix: trust ratio eta ||w|| / ||g|| = 0.001 * 4 / 1 = 0.004, step 3.0 * 0.004 * 0.5 = 0.006
    assert torch.allclose(w, torch.full((2, 2), 2.0 - 0.006))


def test_lars_vector_lr_option():
    b = torch.nn.Parameter(torch.ones(3))
    opt = make("lars", vector_lr=0.5).build_optimizer([b], FakeCtx(run_settings(weight_decay=0.0)))
    assert opt.param_groups[-1]["lr"] == 0.5 and not opt.param_groups[-1]["adapt"]


def test_fused_lion_and_lion_share_one_lr_ratio():
    assert REGISTRY["lion"].Config().lr_ratio == LION_LR_RATIO == 0.3
    assert REGISTRY["fused_optimizer"].Config().lr_ratio == LION_LR_RATIO
    w = torch.nn.Parameter(torch.ones(2, 2))
    ctx = FakeCtx(run_settings(weight_decay=0.0))
    lion = make("lion").build_optimizer([w], ctx)
    fused = make("fused_optimizer", algorithm="lion", backend="reference").build_optimizer(
        [torch.nn.Parameter(torch.ones(2, 2))], ctx
    )
    assert lion.param_groups[0]["lr"] == fused.param_groups[0]["lr"] == pytest.approx(0.003)
    assert lion.param_groups[0]["weight_decay"] == fused.param_groups[0]["weight_decay"]
