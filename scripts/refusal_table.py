"""Every bad input benchbed must refuse, tried through the command line: what each one gives.

Each probe runs ``python -m benchbed.cli ...`` in a fresh temporary directory (the default
``results/`` lands there) and prints one table row: the exit code, the first line of stderr
(control characters escaped), whether anything was written, and the wall time. Probes that train
use a 2-step lm-tiny cell, so a probe the code does not refuse costs a few seconds.

    python scripts/refusal_table.py [--only SUBSTRING] [--markdown]

Run it against another checkout by putting that checkout first on PYTHONPATH. The scenario-file
probes read ``/dev/zero`` and a 2 MiB file, so every probe runs with its address space capped
(8 GB): code that reads a scenario without a bound fails there instead of filling the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

MEMORY_CAP_BYTES = 8_000_000_000
TIMEOUT_S = 120

SCENARIO = """name = "probe"
workload = "lm-tiny"
device = "cpu"
seeds = [0]
timeout_s = 60
{top}
[budget]
steps = 2
{rest}
"""


def scenario(top: str = "", rest: str = "") -> str:
    return SCENARIO.format(top=top, rest=rest)


def shard(tokens, magic: int = 20240520, count: int | None = None, tail: bytes = b"") -> bytes:
    header = np.zeros(256, dtype=np.int32)
    header[:3] = (magic, 1, len(tokens) if count is None else count)
    return header.tobytes() + np.asarray(tokens, dtype=np.uint16).tobytes() + tail


def data(kind: str, path: str) -> str:
    return f'[data]\nkind = "{kind}"\npath = "{path}"\n'


TEXT = b"the quick brown fox jumps over the lazy dog. " * 200
RUN = ["run", "s.toml", "--out", "out", "--quiet"]


def results_dir(cells: pd.DataFrame, run_json) -> dict[str, bytes]:
    """A results directory with these cells and run.json (bytes or a JSON value)."""
    import io

    def parquet(frame: pd.DataFrame) -> bytes:
        buffer = io.BytesIO()
        frame.to_parquet(buffer)
        return buffer.getvalue()

    curves = pd.DataFrame(
        columns=["cell_id", "step", "tokens", "train_time_s", "energy_j", "train_loss", "val_loss"]
    )
    return {
        "cells.parquet": parquet(cells),
        "curves.parquet": parquet(curves),
        "telemetry.parquet": parquet(pd.DataFrame(columns=["cell_id", "t_s"])),
        "run.json": run_json if isinstance(run_json, bytes) else json.dumps(run_json).encode(),
    }


def cells_table(status: str = "reached", variant: str = "adamw", n: int = 5, time_s: float = 10.0):
    return pd.DataFrame(
        [
            {
                "run_id": "r",
                "cell_id": f"c{seed}",
                "config_key": "k",
                "variant": variant,
                "techniques": "adamw",
                "scenario": "probe",
                "workload": "lm-tiny",
                "device": "cpu",
                "seed": seed,
                "repeat": 0,
                "baseline": "adamw",
                "is_baseline": True,
                "target_loss": 3.0,
                "status": status,
                "time_to_target_s": time_s if status == "reached" else float("nan"),
                "tokens_to_target": 64_000.0 if status == "reached" else float("nan"),
                "steps_to_target": 32.0 if status == "reached" else float("nan"),
                "final_val_loss": 0.6 if status in ("reached", "budget_exhausted") else float("nan"),
                "best_val_loss": 0.6 if status in ("reached", "budget_exhausted") else float("nan"),
                "tokens_per_s": 20_000.0 if status in ("reached", "budget_exhausted") else float("nan"),
                "energy_to_target_j": float("nan"),
                "energy_j": float("nan"),
                "energy_source": "unavailable",
                "peak_mem_bytes": 1e8 if status in ("reached", "budget_exhausted") else float("nan"),
            }
            for seed in range(n)
        ]
    )


def under(prefix: str, files: dict[str, bytes]) -> dict[str, bytes]:
    return {f"{prefix}/{name}": content for name, content in files.items()}


GOOD = cells_table()
BUDGET = cells_table("budget_exhausted")
CRASHED = cells_table("error")
HOSTILE = cells_table(variant="adamw|<img src=x onerror=alert(1)>|[click](http://x) @here")

#: (label, files to create, argv after `benchbed`)
PROBES: list[tuple[str, dict[str, bytes], list[str]]] = [
    # -- the scenario file
    ("scenario file is /dev/zero", {}, ["run", "/dev/zero", "--out", "out"]),
    ("scenario file is /dev/zero, --dry-run", {}, ["run", "/dev/zero", "--dry-run"]),
    ("scenario file of 2 MiB", {"s.toml": scenario().encode() + b"#" * (2 << 20)}, RUN),
    ("scenario file is a directory", {"d/x": b""}, ["run", "d", "--out", "out"]),
    (
        "integer literal of 5000 digits",
        {"s.toml": scenario().replace("seeds = [0]", "seeds = [" + "9" * 5000 + "]").encode()},
        RUN,
    ),
    # -- the name and the output path
    (
        'name = "/abs/dir"',
        {"s.toml": scenario().replace('"probe"', '"/abs/dir"').encode()},
        ["run", "s.toml", "--dry-run"],
    ),
    (
        'name = "../../x"',
        {"s.toml": scenario().replace('"probe"', '"../../x"').encode()},
        ["run", "s.toml", "--dry-run"],
    ),
    ('name = ""', {"s.toml": scenario().replace('"probe"', '""').encode()}, ["run", "s.toml", "--dry-run"]),
    (
        "name with an escape sequence",
        {"s.toml": scenario().replace('"probe"', '"\\u001b[31mred\\u001b[0m"').encode()},
        ["run", "s.toml", "--dry-run"],
    ),
    # -- values
    ("device = cuda without CUDA", {"s.toml": scenario().replace('"cpu"', '"cuda"').encode()}, RUN),
    ('[[include]] lr = "fast"', {"s.toml": scenario(rest='[[include]]\nlr = "fast"\n').encode()}, RUN),
    ("[[include]] lr = -1", {"s.toml": scenario(rest="[[include]]\nlr = -1\n").encode()}, RUN),
    ("[[include]] batch_size = 0", {"s.toml": scenario(rest="[[include]]\nbatch_size = 0\n").encode()}, RUN),
    ("[[include]] seed = -3", {"s.toml": scenario(rest="[[include]]\nseed = -3\n").encode()}, RUN),
    ("technique option nan", {"s.toml": scenario(rest="[techniques.adamw]\neps = nan\n").encode()}, RUN),
    ("technique option inf", {"s.toml": scenario(rest="[techniques.adamw]\nbeta2 = inf\n").encode()}, RUN),
    (
        "seed 10**30",
        {"s.toml": scenario().replace("seeds = [0]", "seeds = [1000000000000000000000000000000]").encode()},
        RUN,
    ),
    ("timeout_s = 1e10", {"s.toml": scenario().replace("timeout_s = 60", "timeout_s = 1e10").encode()}, RUN),
    (
        "100,000-cell matrix (repeats)",
        {"s.toml": scenario("repeats = 100000").encode()},
        ["run", "s.toml", "--dry-run"],
    ),
    (
        "--repeat 100000",
        {"s.toml": scenario().encode()},
        ["run", "s.toml", "--repeat", "100000", "--dry-run"],
    ),
    # -- data sources
    ("text: file missing", {"s.toml": scenario(rest=data("text", "missing.txt")).encode()}, RUN),
    ("text: empty file", {"s.toml": scenario(rest=data("text", "e.txt")).encode(), "e.txt": b""}, RUN),
    ("text: 40 bytes", {"s.toml": scenario(rest=data("text", "t.txt")).encode(), "t.txt": TEXT[:40]}, RUN),
    ("text: a directory", {"s.toml": scenario(rest=data("text", "d")).encode(), "d/a.txt": TEXT}, RUN),
    ("text: /dev/zero", {"s.toml": scenario(rest=data("text", "/dev/zero")).encode()}, RUN),
    ("text: glob matching nothing", {"s.toml": scenario(rest=data("text", "corpus/*.txt")).encode()}, RUN),
    (
        "shards: wrong magic",
        {
            "s.toml": scenario(rest=data("shards", "a.bin")).encode(),
            "a.bin": shard(np.arange(5000) % 32, magic=7),
        },
        RUN,
    ),
    (
        "shards: shorter than the header",
        {"s.toml": scenario(rest=data("shards", "a.bin")).encode(), "a.bin": b"\x00" * 100},
        RUN,
    ),
    (
        "shards: odd length",
        {
            "s.toml": scenario(rest=data("shards", "a.bin")).encode(),
            "a.bin": shard(np.arange(5000) % 32, tail=b"\x01"),
        },
        RUN,
    ),
    (
        "shards: count disagrees with header",
        {
            "s.toml": scenario(rest=data("shards", "a.bin")).encode(),
            "a.bin": shard(np.arange(5000) % 32, count=9000),
        },
        RUN,
    ),
    (
        "shards: token id outside vocabulary",
        {"s.toml": scenario(rest=data("shards", "a.bin")).encode(), "a.bin": shard(np.arange(5000) % 40)},
        RUN,
    ),
    (
        "shards: too few tokens for a sequence",
        {"s.toml": scenario(rest=data("shards", "a.bin")).encode(), "a.bin": shard(np.arange(50) % 32)},
        RUN,
    ),
    # -- gate, report
    (
        "gate: run.json is a list",
        {**under("b", results_dir(GOOD, [1, 2])), **under("c", results_dir(GOOD, {"schema_version": 1}))},
        ["gate", "b", "c"],
    ),
    (
        "gate: run.json truncated",
        {
            **under("b", results_dir(GOOD, b'{"schema_version": 1, "run')),
            **under("c", results_dir(GOOD, {"schema_version": 1})),
        },
        ["gate", "b", "c"],
    ),
    (
        "gate: run.json env is a list",
        {
            **under("b", results_dir(GOOD, {"schema_version": 1, "env": []})),
            **under("c", results_dir(GOOD, {"schema_version": 1})),
        },
        ["gate", "b", "c"],
    ),
    (
        "gate: --json to a directory",
        {
            **under("b", results_dir(GOOD, {"schema_version": 1})),
            **under("c", results_dir(GOOD, {"schema_version": 1})),
            "j/x": b"",
        },
        ["gate", "b", "c", "--json", "j"],
    ),
    (
        "gate: --markdown unwritable",
        {
            **under("b", results_dir(GOOD, {"schema_version": 1})),
            **under("c", results_dir(GOOD, {"schema_version": 1})),
            "f": b"",
        },
        ["gate", "b", "c", "--markdown", "f/gate.md"],
    ),
    (
        "gate: cells without variant",
        {
            **under("b", results_dir(GOOD.drop(columns=["variant"]), {"schema_version": 1})),
            **under("c", results_dir(GOOD, {"schema_version": 1})),
        },
        ["gate", "b", "c"],
    ),
    (
        "gate: all-crashed candidate vs budget-capped baseline",
        {
            **under("b", results_dir(BUDGET, {"schema_version": 1})),
            **under("c", results_dir(CRASHED, {"schema_version": 1})),
        },
        ["gate", "b", "c"],
    ),
    (
        "gate: hostile variant name in markdown",
        {
            **under("b", results_dir(HOSTILE, {"schema_version": 1})),
            **under("c", results_dir(HOSTILE, {"schema_version": 1})),
        },
        ["gate", "b", "c", "--markdown", "gate.md"],
    ),
    (
        "report: cells without variant",
        under("b", results_dir(GOOD.drop(columns=["variant"]), {"schema_version": 1})),
        ["report", "b", "--html", "r.html"],
    ),
    (
        "report: cells without seed",
        under("b", results_dir(GOOD.drop(columns=["seed"]), {"schema_version": 1})),
        ["report", "b", "--html", "r.html"],
    ),
]


def _cap_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP_BYTES, MEMORY_CAP_BYTES))


def printable(text: str) -> str:
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def run_probe(label: str, files: dict[str, bytes], argv: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name, content in files.items():
            path = root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
        before = {p for p in root.rglob("*")}
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "benchbed.cli", *argv],
                cwd=root,
                capture_output=True,
                timeout=TIMEOUT_S,
                preexec_fn=_cap_memory,
                env={**os.environ, "BENCHBED_THREADS": "1"},
            )
            code, err = proc.returncode, proc.stderr.decode(errors="replace")
            out = proc.stdout.decode(errors="replace")
        except subprocess.TimeoutExpired:
            code, err, out = "timeout", "", ""
        wall = time.perf_counter() - t0
        written = sorted(str(p.relative_to(root)) for p in set(root.rglob("*")) - before if p.is_file())
        lines = [line for line in err.strip().splitlines() if line.strip()]
        first = lines[0] if lines else (out.strip().splitlines() or [""])[0]
        if "Traceback" in err:
            first = f"TRACEBACK ({len(lines)} lines): {lines[-1] if lines else ''}"
        markdown = (root / "gate.md").read_text() if (root / "gate.md").is_file() else ""
    return {
        "probe": label,
        "exit": code,
        "message": printable(first)[:160],
        "written": ", ".join(written[:3]) + (" ..." if len(written) > 3 else "") if written else "nothing",
        "raw_html": "<img" in markdown,
        "seconds": round(wall, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="run only probes whose label contains this")
    parser.add_argument("--markdown", action="store_true", help="print a markdown table")
    args = parser.parse_args()
    rows = [run_probe(*p) for p in PROBES if not args.only or args.only in p[0]]
    for row in rows:
        if row["probe"].startswith("gate: hostile"):
            row["message"] += " [raw <img> in the markdown]" if row.pop("raw_html") else " [escaped]"
        else:
            row.pop("raw_html")
    if args.markdown:
        print("| probe | exit | first line | written | s |\n|---|---|---|---|---|")
        for r in rows:
            message = r["message"].replace("|", "\\|")
            print(f"| {r['probe']} | {r['exit']} | {message} | {r['written']} | {r['seconds']} |")
    else:
        for r in rows:
            print(
                f"{r['probe'][:44]:44} exit {r['exit']!s:7} {r['seconds']:6.1f}s  written: {r['written'][:40]}"
            )
            print(f"    {r['message']}")


if __name__ == "__main__":
    main()
