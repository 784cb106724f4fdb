"""Print the fine-tuning, compression and RLHF figures from results directories.

    python scripts/finetune_report.py --run            # runs finetune, compress and rlhf first
    python scripts/finetune_report.py results/finetune results/compress results/rlhf

With ``--run`` it runs the three shipped CPU scenarios into ``results/<name>`` (cells already
there are skipped) and then prints, per scenario, medians over seeds:

* fine-tuning (ft-tiny): time and tokens to target, trainable parameters, FLOPs per token, and the
  measured memory columns (optimizer state, saved activations) where this build records them;
  the base's one-off pretraining cost once;
* compression (lm-tiny): each row against training the small model directly at the same token
  budget, the compression step, the wide and small models' FLOPs per token, and structured
  early-bird's FLOPs per token before and after its ticket;
* RLHF (rlhf-tiny): per seed, the reward model's and the policy's time to target, the pipeline's,
  the held-out accuracy, the mean true reward, the KL to the reference, and the cells' wall time.

Timings depend on the machine and its load: on shared cores they are noisy.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd

from benchbed.present.format import format_value
from benchbed.results import store

SCENARIOS = ("finetune", "compress", "rlhf")
MEMORY = ("optimizer_state_bytes", "saved_activation_bytes", "param_bytes", "grad_bytes")


def fmt(value, column: str = "") -> str:
    return format_value(value, column, missing="-")


def extra(row: pd.Series) -> dict:
    try:
        return json.loads(row.get("run_extra") or "{}")
    except (TypeError, ValueError):
        return {}


def print_table(title: str, rows: list[dict]) -> None:
    print(f"\n## {title}\n")
    if not rows:
        print("(no rows)")
        return
    columns = list(rows[0])
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in columns) + " |")


def median(frame: pd.DataFrame, column: str) -> float:
    if column not in frame:
        return math.nan
    values = pd.to_numeric(frame[column], errors="coerce").dropna()
    return float(values.median()) if len(values) else math.nan


def finetune(cells: pd.DataFrame) -> None:
    rows, keys = [], []
    for variant, g in cells.groupby("variant"):
        t = median(g, "time_to_target_s")
        keys.append((not (g.status == "reached").sum() * 2 >= len(g), t if t == t else math.inf))
        row = {
            "variant": variant,
            "reached": f"{int((g.status == 'reached').sum())}/{len(g)}",
            "time to target (s)": fmt(t, "time_to_target_s"),
            "tokens to target": fmt(median(g, "tokens_to_target"), "tokens_to_target"),
            "trainable params": fmt(median(g, "trainable_params"), "trainable_params"),
            "params": fmt(median(g, "params"), "params"),
            "FLOPs/token (formula)": fmt(median(g, "flops_per_token"), "flops_per_token"),
        }
        for column in MEMORY:
            row[column] = fmt(median(g, column), column) if column in g else "not in this build"
        rows.append(row)
    rows = [r for _, r in sorted(zip(keys, rows, strict=True), key=lambda kr: kr[0])]
    print_table("Fine-tuning on ft-tiny (median over seeds)", rows)
    bases = cells.dropna(subset=["base_key"]).drop_duplicates("base_key")
    for _, b in bases.iterrows():
        print(
            f"\nbase {b.base_key}: pretrained once, {fmt(b.pretrain_tokens, 'tokens')} tokens in "
            f"{fmt(b.pretrain_time_s, 'pretrain_time_s')} s, energy {fmt(b.pretrain_energy_j, 'energy_j')} J "
            "(on no cell's clock)"
        )


def compress(cells: pd.DataFrame) -> None:
    rows = []
    base = cells[cells.is_baseline]
    base_t = median(base, "time_to_target_s")
    for variant, g in cells.groupby("variant"):
        ex = [extra(r) for _, r in g.iterrows()]

        def ex_median(key, ex=ex):
            vals = [e[key] for e in ex if key in e and e[key] is not None]
            return float(pd.Series(vals).median()) if vals else math.nan

        t = median(g, "time_to_target_s")
        rows.append(
            {
                "variant": variant,
                "reached": f"{int((g.status == 'reached').sum())}/{len(g)}",
                "time to target (s)": fmt(t, "time_to_target_s"),
                "vs small directly": fmt(base_t / t if t == t and t > 0 else math.nan, "speedup") + "x",
                "tokens to target": fmt(median(g, "tokens_to_target"), "tokens_to_target"),
                "budget (tokens)": fmt(
                    float(json.loads(g.iloc[0].config_json)["budget"]["tokens"]), "tokens"
                ),
                "switch step": fmt(
                    ex_median("compress_step") if "compress" in variant else ex_median("early_bird_step"),
                    "steps",
                ),
                "FLOPs/token before": fmt(
                    ex_median("compress_wide_flops_per_token")
                    if "compress" in variant
                    else ex_median("early_bird_flops_per_token_before"),
                    "flops_per_token",
                ),
                "FLOPs/token after": fmt(median(g, "flops_per_token"), "flops_per_token"),
            }
        )
    print_table("Compression on lm-tiny, equal token budget (median over seeds)", rows)


def rlhf(cells: pd.DataFrame) -> None:
    rows = []
    for seed, g in cells.groupby("seed"):
        rm = g[g.workload.str.endswith("-rm")]
        pol = g[~g.workload.str.endswith("-rm")]
        if rm.empty or pol.empty:
            continue
        rm, pol = rm.iloc[0], pol.iloc[0]
        rows.append(
            {
                "seed": seed,
                "reward model to 90% (s)": fmt(rm.time_to_target_s, "time_to_target_s"),
                "held-out accuracy": fmt(rm.reward_accuracy, "reward_accuracy"),
                "DPO to target (s)": fmt(pol.time_to_target_s, "time_to_target_s"),
                "pipeline (s)": fmt(pol.pipeline_time_to_target_s, "time_to_target_s"),
                "pipeline energy (J)": fmt(pol.pipeline_energy_to_target_j, "energy_j"),
                "mean true reward": fmt(pol.mean_true_reward, "mean_true_reward"),
                "KL to reference (nats)": fmt(pol.kl_to_reference, "kl_to_reference"),
                "reference pretraining (s)": fmt(pol.pretrain_time_s, "pretrain_time_s"),
                "wall, both cells (s)": fmt(rm.wall_time_s + pol.wall_time_s, "wall_time_s"),
            }
        )
    print_table("RLHF on rlhf-tiny: reward model, then DPO against it", rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="*", help="results directories (default: results/<scenario>)")
    parser.add_argument("--run", action="store_true", help="run the three CPU scenarios first")
    args = parser.parse_args(argv)
    dirs = args.dirs or [f"results/{name}" for name in SCENARIOS]
    if args.run:
        for name in SCENARIOS:
            subprocess.run(
                [sys.executable, "-m", "benchbed.cli", "run", name, "--out", f"results/{name}"], check=False
            )
    for d in dirs:
        if not Path(d).is_dir():
            print(f"{d}: no results (run it with --run, or benchbed run <scenario> --out {d})")
            continue
        cells = store.load(d).cells
        workloads = set(cells.workload)
        if workloads & {"ft-tiny", "ft-small"}:
            finetune(cells)
        elif workloads & {"rlhf-tiny", "rlhf-tiny-rm"}:
            rlhf(cells)
        else:
            compress(cells)
    return 0


if __name__ == "__main__":
    sys.exit(main())
