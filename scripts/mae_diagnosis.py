"""Why MAE (patch_masking) stays near chance on vit-tiny: the pre-trained encoder blocks, not the
switch to the labels.

    python scripts/mae_diagnosis.py [--budget 9600] [--pretrain-frac 0.25] [--seed 0]

Everything runs through the worker's own assembly and train loop (one process, no scenario, no
measurement sampling), on the CPU, one thread. For one seed it prints the validation loss at the end
of the labelled phase (its length: the budget after pre-training) for

1. the patch_masking cell itself (pre-training, switch, fine-tuning in one run);
2. the weights at its switch, fine-tuned by a plain adamw cell of the same length (no patch_masking
   code runs after the switch: if this stays near chance too, the switch is not the cause);
3. the same, with the encoder blocks re-initialised (patch embedding, positions, final norm kept);
4. a plain adamw cell of the same length from random initialisation;

and the accuracy of a linear probe (L-BFGS logistic regression on 2048 training images, scored on
512 validation images) of the mean-pooled encoder output at random initialisation and at the switch.
ln(10) = 2.303 nats is chance (ten classes). Losses are deterministic for a seed on the CPU; the
script takes about five minutes on one idle core.
"""

from __future__ import annotations

import argparse
import copy
import math

import torch
import torch.nn.functional as F

from benchbed.models.vit import ViT
from benchbed.techniques import REGISTRY, build_config
from benchbed.worker.assemble import build_context, run_settings
from benchbed.worker.loop import seed_everything, train
from benchbed.workloads import WORKLOADS

WORKLOAD = "vit-tiny"


class NoTelemetry:
    def window_start(self) -> None:
        pass

    def window_end(self) -> None:
        pass

    def training_energy_j(self) -> float:
        return math.nan


def run_cell(names: list[str], options: dict, budget: int, seed: int, before=None):
    """Train one cell to the end of its budget; `before(ctx)` edits it before the first step."""
    w = WORKLOADS[WORKLOAD]
    techniques = []
    for name in names:
        cls = REGISTRY[name]
        techniques.append(cls(build_config(cls, options.get(name, {}), f"techniques.{name}")))
    run = run_settings(w, torch.device("cpu"), budget_tokens=budget, seed=seed, stop_at_target=False)
    seed_everything(seed, run.device)
    view = {"device": "cpu", "techniques": names, "workload": WORKLOAD, "world_size": 1}
    ctx = build_context(w, techniques, run, view)
    if before is not None:
        before(ctx)
    out = train(ctx, w.make_data(), NoTelemetry(), measure=False)
    return ctx, out["curves"][-1]["val_loss"]


def probe_accuracy(model: ViT, train_set, val_set) -> float:
    """Validation accuracy of a logistic regression on the mean-pooled encoder output."""

    def features(images):
        with torch.no_grad():
            return model.encode(model.embed_patches(model.patchify(images))).mean(1)

    (x, y), (xv, yv) = train_set, val_set
    f, fv = features(x), features(xv)
    mean, std = f.mean(0), f.std(0) + 1e-6
    f, fv = (f - mean) / std, (fv - mean) / std
    weight = torch.zeros(f.shape[1], int(y.max()) + 1, requires_grad=True)
    bias = torch.zeros(weight.shape[1], requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], max_iter=300)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(f @ weight + bias, y) + 1e-3 * weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return float(((fv @ weight + bias).argmax(1) == yv).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=9600, help="images (vit-tiny's is 19,200)")
    parser.add_argument("--pretrain-frac", type=float, default=0.25)
    parser.add_argument("--mask-ratio", type=float, default=0.75)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    options = {"patch_masking": {"mask_ratio": args.mask_ratio, "pretrain_frac": args.pretrain_frac}}
    snapshot: dict = {}

    def keep_switch(ctx):
        mae = ctx.techniques[0]
        switch = mae.switch_to_labels
        snapshot["init"] = copy.deepcopy(ctx.model)

        def switched(c):
            snapshot["switch"] = copy.deepcopy(c.model)
            snapshot["step"] = c.step
            switch(c)

        mae.switch_to_labels = switched

    ctx, mae_loss = run_cell(["patch_masking", "adamw"], options, args.budget, args.seed, keep_switch)
    tokens_per_step = ctx.run.tokens_per_step
    rest = args.budget - snapshot["step"] * tokens_per_step
    pretrained = {
        k: v for k, v in snapshot["switch"].state_dict().items() if not k.startswith("mae_decoder.")
    }

    def load(blocks_fresh: bool):
        def before(c):
            state = dict(pretrained)
            if blocks_fresh:
                state.update({k: v for k, v in c.model.state_dict().items() if k.startswith("blocks.")})
            c.model.load_state_dict(state)

        return before

    _, plain_from_mae = run_cell(["adamw"], {}, rest, args.seed, load(False))
    _, fresh_blocks = run_cell(["adamw"], {}, rest, args.seed, load(True))
    _, scratch = run_cell(["adamw"], {}, rest, args.seed)

    data = WORKLOADS[WORKLOAD].make_data()
    train_set = next(data.train_batches(2048, 1, 10_000 + args.seed))
    val_set = data.val_batches(512, 1, 512)[0]
    probe_init = probe_accuracy(snapshot["init"].eval(), train_set, val_set)
    probe_mae = probe_accuracy(snapshot["switch"].eval(), train_set, val_set)

    steps = rest // tokens_per_step
    print(
        f"vit-tiny, seed {args.seed}, budget {args.budget} images: {snapshot['step']} MAE steps "
        f"(mask {args.mask_ratio}), then {steps} labelled steps; chance = ln 10 = {math.log(10):.3f}"
    )
    print(f"{'labelled phase of ' + str(steps) + ' steps':58s} final val loss")
    for label, value in (
        ("1. patch_masking cell (pre-train, switch, fine-tune)", mae_loss),
        ("2. its weights at the switch, plain adamw cell", plain_from_mae),
        ("3. same, encoder blocks re-initialised", fresh_blocks),
        ("4. plain adamw cell from random initialisation", scratch),
    ):
        print(f"{label:58s} {value:.3f}")
    print(
        f"linear probe of the pooled encoder output: random init {probe_init:.1%}, "
        f"after MAE pre-training {probe_mae:.1%} (chance 10%)"
    )


if __name__ == "__main__":
    main()
