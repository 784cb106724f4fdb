"""Fused optimizer steps: one launch updates a flat buffer of parameters and its states in place.

AdamW: Loshchilov & Hutter 2019, "Decoupled Weight Decay Regularization", written exactly as
torch.optim.AdamW computes it (decay the parameter by lr*wd, lerp the first moment, update the
second, bias-correct both, divide by sqrt(v_hat)+eps). Lion: Chen et al. 2023, "Symbolic Discovery
of Optimization Algorithms", Algorithm 2: update = sign(beta1*m + (1-beta1)*g); p -= lr*(update +
wd*p); m = beta2*m + (1-beta2)*g.

Each element is independent, so the kernel is a flat elementwise pass: the parameter (fp32, bf16 or
fp16) is read and written once, the gradient read once, the fp32 states read and written once.
Scalars that depend on the step (bias corrections) are computed on the host in double precision.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from benchbed.kernels._triton import DTYPE_NAMES, HAS_TRITON, POINTER_TYPES, AotConfig, launcher, signature_of

if HAS_TRITON:
    import triton
    import triton.language as tl

BLOCK = 1024


# -- PyTorch references (any dtype, float64 included) --------------------------------------------------
@torch.no_grad()
def adamw_step_reference(params, grads, exp_avg, exp_avg_sq, step, lr, betas, eps, weight_decay) -> None:
    beta1, beta2 = betas
    params.mul_(1.0 - lr * weight_decay)
    g = grads.to(exp_avg.dtype)
    exp_avg.lerp_(g, 1.0 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
    step_size = lr / (1.0 - beta1**step)
    denom = (exp_avg_sq.sqrt() / math.sqrt(1.0 - beta2**step)).add_(eps)
    params.add_((exp_avg / denom).to(params.dtype), alpha=-step_size)


@torch.no_grad()
def lion_step_reference(params, grads, exp_avg, lr, betas, weight_decay) -> None:
    beta1, beta2 = betas
    g = grads.to(exp_avg.dtype)
    update = torch.sign(exp_avg * beta1 + g * (1.0 - beta1))
    params.mul_(1.0 - lr * weight_decay).add_(update.to(params.dtype), alpha=-lr)
    exp_avg.mul_(beta2).add_(g, alpha=1.0 - beta2)


# -- Triton kernels --------------------------------------------------------------------------------
if HAS_TRITON:

    @triton.jit
    def _adamw_kernel(
        P, G, M, V, n, lr, beta1, beta2, eps, weight_decay, step_size, inv_sqrt_bias2,
        BLOCK: tl.constexpr,
    ):  # fmt: skip
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        p = tl.load(P + offs, mask=mask).to(tl.float32)
        g = tl.load(G + offs, mask=mask).to(tl.float32)
        m = tl.load(M + offs, mask=mask)
        v = tl.load(V + offs, mask=mask)
        p = p * (1.0 - lr * weight_decay)
        m = m + (1.0 - beta1) * (g - m)  # lerp, as torch.optim.AdamW
        v = v * beta2 + (1.0 - beta2) * g * g
        denom = tl.sqrt(v) * inv_sqrt_bias2 + eps
        p = p - step_size * (m / denom)
        tl.store(P + offs, p.to(P.dtype.element_ty), mask=mask)
        tl.store(M + offs, m, mask=mask)
        tl.store(V + offs, v, mask=mask)

    @triton.jit
    def _lion_kernel(P, G, M, n, lr, beta1, beta2, weight_decay, BLOCK: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        p = tl.load(P + offs, mask=mask).to(tl.float32)
        g = tl.load(G + offs, mask=mask).to(tl.float32)
        m = tl.load(M + offs, mask=mask)
        c = m * beta1 + g * (1.0 - beta1)
        update = tl.where(c > 0, 1.0, tl.where(c < 0, -1.0, 0.0))
        p = p * (1.0 - lr * weight_decay) - lr * update
        m = m * beta2 + g * (1.0 - beta2)
        tl.store(P + offs, p.to(P.dtype.element_ty), mask=mask)
        tl.store(M + offs, m, mask=mask)


def _check_flat(params, grads, *states):
    for name, t in (("params", params), ("grads", grads)) + tuple(
        (f"state{i}", s) for i, s in enumerate(states)
    ):
        if t.dim() != 1 or not t.is_contiguous():
            raise ValueError(
                f"{name}: the fused step needs flat contiguous buffers, got shape {tuple(t.shape)}"
            )
        if t.numel() != params.numel():
            raise ValueError(f"{name}: {t.numel()} elements, params have {params.numel()}")
    for i, s in enumerate(states):
        if s.dtype != torch.float32:
            raise ValueError(f"state{i}: optimizer states are float32, got {s.dtype}")


@torch.no_grad()
def adamw_step_triton(params, grads, exp_avg, exp_avg_sq, step, lr, betas, eps, weight_decay) -> None:
    _check_flat(params, grads, exp_avg, exp_avg_sq)
    beta1, beta2 = betas
    n = params.numel()
    if n:
        step_size = lr / (1.0 - beta1**step)
        inv_sqrt_bias2 = 1.0 / math.sqrt(1.0 - beta2**step)
        launcher(_adamw_kernel, params.device)[(triton.cdiv(n, BLOCK),)](
            params, grads, exp_avg, exp_avg_sq, n, lr, beta1, beta2, eps, weight_decay, step_size,
            inv_sqrt_bias2, BLOCK=BLOCK, num_warps=4,
        )  # fmt: skip


@torch.no_grad()
def lion_step_triton(params, grads, exp_avg, lr, betas, weight_decay) -> None:
    _check_flat(params, grads, exp_avg)
    n = params.numel()
    if n:
        launcher(_lion_kernel, params.device)[(triton.cdiv(n, BLOCK),)](
            params, grads, exp_avg, n, lr, betas[0], betas[1], weight_decay, BLOCK=BLOCK, num_warps=4
        )


# -- a torch.optim.Optimizer over flat buffers ------------------------------------------------------
class _FlatBucket:
    """Parameters of one group, dtype and device, living as views of one flat buffer."""

    def __init__(self, params: list[torch.nn.Parameter]):
        self.params = params
        with torch.no_grad():
            self.flat = torch.cat([p.detach().reshape(-1) for p in params])
            offset = 0
            for p in params:
                p.data = self.flat[offset : offset + p.numel()].view_as(p)
                offset += p.numel()
        self.exp_avg = torch.zeros(self.flat.numel(), device=self.flat.device, dtype=torch.float32)
        self.exp_avg_sq: torch.Tensor | None = None
        self.step = 0

    def gather_grads(self) -> torch.Tensor:
        return torch.cat(
            [
                (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).to(self.flat.dtype)
                for p in self.params
            ]
        )


class FusedStepOptimizer(torch.optim.Optimizer):
    """AdamW or Lion over flat per-group buffers, one fused step launch per bucket."""

    def __init__(
        self, params, *, algorithm: str, step_fn: Callable, lr: float, betas, eps: float, weight_decay: float
    ):
        if algorithm not in ("adamw", "lion"):
            raise ValueError(f"algorithm: expected adamw or lion, got '{algorithm}'")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay})
        self.algorithm = algorithm
        self.step_fn = step_fn
        self.buckets: list[list[_FlatBucket]] = []
        for group in self.param_groups:
            by_kind: dict[tuple, list] = {}
            for p in group["params"]:
                by_kind.setdefault((p.dtype, p.device), []).append(p)
            buckets = [_FlatBucket(ps) for ps in by_kind.values()]
            for bucket in buckets:
                if algorithm == "adamw":
                    bucket.exp_avg_sq = torch.zeros_like(bucket.exp_avg)
                self._point_state_at(bucket)
            self.buckets.append(buckets)

    def _point_state_at(self, bucket: _FlatBucket) -> None:
        """Per-parameter views of the flat states, so state_dict() and inspection see them."""
        offset = 0
        for p in bucket.params:
            view = slice(offset, offset + p.numel())
            state = self.state[p]
            state["step"] = float(bucket.step)
            state["exp_avg"] = bucket.exp_avg[view].view(p.shape)
            if bucket.exp_avg_sq is not None:
                state["exp_avg_sq"] = bucket.exp_avg_sq[view].view(p.shape)
            offset += p.numel()

    def load_state_dict(self, state_dict: dict) -> None:
        """torch's loader installs copies of the saved states; write them into the flat buffers the
        kernel updates and point the per-parameter entries back at those buffers."""
        super().load_state_dict(state_dict)
        with torch.no_grad():
            for buckets in self.buckets:
                for bucket in buckets:
                    offset = 0
                    for p in bucket.params:
                        view = slice(offset, offset + p.numel())
                        loaded = self.state[p]
                        bucket.exp_avg[view].copy_(loaded["exp_avg"].reshape(-1))
                        if bucket.exp_avg_sq is not None:
                            bucket.exp_avg_sq[view].copy_(loaded["exp_avg_sq"].reshape(-1))
                        bucket.step = int(loaded.get("step", bucket.step))
                        offset += p.numel()
                    self._point_state_at(bucket)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group, buckets in zip(self.param_groups, self.buckets, strict=True):
            lr, betas, wd = group["lr"], group["betas"], group["weight_decay"]
            for bucket in buckets:
                if bucket.flat.numel() == 0:
                    continue
                bucket.step += 1
                for p in bucket.params:
                    self.state[p]["step"] = float(bucket.step)
                grads = bucket.gather_grads()
                if self.algorithm == "adamw":
                    self.step_fn(
                        bucket.flat,
                        grads,
                        bucket.exp_avg,
                        bucket.exp_avg_sq,
                        bucket.step,
                        lr,
                        betas,
                        group["eps"],
                        wd,
                    )
                else:
                    self.step_fn(bucket.flat, grads, bucket.exp_avg, lr, betas, wd)
        return loss


# -- ahead-of-time configurations --------------------------------------------------------------------
def aot_configs() -> list[AotConfig]:
    configs = []
    for p_dtype in (torch.float32, torch.bfloat16, torch.float16):
        p = POINTER_TYPES[p_dtype]
        label = f"params {DTYPE_NAMES[p_dtype]}"
        adamw_types = {"P": p, "G": p, "M": "*fp32", "V": "*fp32", "n": "i32", "lr": "fp32", "beta1": "fp32",
                       "beta2": "fp32", "eps": "fp32", "weight_decay": "fp32", "step_size": "fp32",
                       "inv_sqrt_bias2": "fp32"}  # fmt: skip
        lion_types = {"P": p, "G": p, "M": "*fp32", "n": "i32", "lr": "fp32", "beta1": "fp32",
                      "beta2": "fp32", "weight_decay": "fp32"}  # fmt: skip
        for op, kernel, types in (
            ("adamw_step", _adamw_kernel, adamw_types),
            ("lion_step", _lion_kernel, lion_types),
        ):
            constexprs = {"BLOCK": BLOCK}
            configs.append(
                AotConfig(op, kernel, label, signature_of(kernel, types, constexprs), constexprs, 4, 1)
            )
    return configs
