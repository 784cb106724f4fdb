"""`benchbed kernels list | bench | report`.

- list: ops, backends, dtypes, devices, and what `auto` picks on this machine.
- bench --out DIR: the sweep of kernels/bench.py, written to DIR/kernels.parquet. On a machine
  without CUDA it runs the small shapes with the reference (and the PyTorch baselines), Triton only
  under the interpreter and only with --interpreter, and says so.
- report: compiles every kernel configuration ahead of time for sm_90 and sm_80 (no GPU needed)
  and prints registers, shared memory, stack/spill bytes and whether the PTX uses wgmma; exit 1 when
  a configuration spills or overflows shared memory.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import os
import sys
from dataclasses import asdict
from pathlib import Path

COLUMNS = [
    "op",
    "backend",
    "shape",
    "dtype",
    "mode",
    "median_ms",
    "tflops",
    "gb_s",
    "peak_mem_bytes",
    "device",
    "note",
]


def _fail(message: str) -> int:
    print(f"benchbed kernels: {message}", file=sys.stderr)
    return 2


def _table(rows: list[dict], columns: list[str]) -> str:
    def fmt(v) -> str:
        if isinstance(v, float):
            return "nan" if math.isnan(v) else f"{v:.4g}"
        return str(v)

    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def cmd_list(args) -> int:
    from benchbed.kernels import describe_kernels

    rows = describe_kernels()
    print(_table(rows, ["op", "backends", "dtypes", "devices", "auto_here"]))
    return 0


def cmd_bench(args) -> int:
    import torch

    from benchbed.kernels.bench import all_cases, measure

    on_cuda = torch.cuda.is_available() and not args.cpu
    device = torch.device("cuda") if on_cuda else torch.device("cpu")
    device_name = torch.cuda.get_device_name(device) if on_cuda else "cpu"
    cases = [
        c
        for c in all_cases(device)
        if not args.ops or any(fnmatch.fnmatch(c.op, p) for p in args.ops.split(","))
    ]
    if not on_cuda:
        skipped = sum(1 for c in cases if c.backend == "triton" and not args.interpreter)
        cases = [c for c in cases if c.size == "small" and (c.backend != "triton" or args.interpreter)]
        how = "Triton under the interpreter (slow, not a GPU timing)" if args.interpreter else "no Triton"
        print(
            f"benchbed kernels bench: no CUDA device; running {len(cases)} small cases on the CPU with the "
            f"reference and PyTorch baselines, {how}; {skipped} Triton cases skipped. Not GPU numbers.",
            file=sys.stderr,
        )
    if not cases:
        return _fail(f"--ops: no op matches '{args.ops}'")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for case in cases:
        repeats = 1 if (case.backend == "triton" and not on_cuda) else args.repeats
        row = measure(case, device, repeats=repeats, warmup=1 if repeats == 1 else 2)
        row["device"] = device_name
        if case.backend == "triton" and not on_cuda:
            row["note"] = (row["note"] + " interpreter").strip()
        rows.append(row)
        print(
            f"{row['op']:22s} {row['backend']:9s} {row['dtype']:4s} {row['mode']:7s} {row['shape']:32s} "
            f"{row['median_ms']:10.3f} ms  {row['note']}",
            file=sys.stderr,
            flush=True,
        )
        frame = _write(rows, out)  # after every case: a sweep cut short by a time limit keeps its rows
    print(f"wrote {out / 'kernels.parquet'} ({len(frame)} rows)")
    return 0


def _write(rows: list[dict], out: Path):
    import pandas as pd

    frame = pd.DataFrame(rows, columns=COLUMNS)
    for column in ("median_ms", "tflops", "gb_s", "peak_mem_bytes"):
        frame[column] = frame[column].astype("float64")
    partial = out / "kernels.parquet.partial"
    frame.to_parquet(partial, index=False)
    partial.replace(out / "kernels.parquet")
    return frame


def cmd_report(args) -> int:
    from benchbed.kernels import aot_configs
    from benchbed.kernels.aot import ARCH_NAMES, compile_all

    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        return _fail("report: unset TRITON_INTERPRET (ahead-of-time compiles need Triton's compiled library)")
    try:
        archs = tuple(int(a) for a in args.arch.split(","))
    except ValueError:
        return _fail(f"--arch: expected comma-separated compute capabilities like 90,80, got '{args.arch}'")
    unknown = [a for a in archs if a not in ARCH_NAMES]
    if unknown:
        return _fail(f"--arch: {unknown} not one of {sorted(ARCH_NAMES)}")
    configs = aot_configs()
    indices = [i for i, c in enumerate(configs) if not args.op or fnmatch.fnmatch(c.op, args.op)]
    if not indices:
        return _fail(f"--op: no kernel configuration of op '{args.op}'")
    results = compile_all(archs, jobs=args.jobs, indices=indices)
    rows = [
        {
            **asdict(r),
            "fits_shared": r.fits_shared,
            "arch": f"sm_{r.arch}",
            "spill": "-" if r.stack_bytes is None else r.stack_bytes,
        }
        for r in results
    ]
    columns = ["op", "kernel", "config", "hints", "arch", "num_warps", "num_stages", "registers", "shared_bytes",
               "spill", "local_bytes", "wgmma", "fits_shared"]  # fmt: skip
    print(_table(rows, columns))
    spilled = [r for r in results if r.spills]
    too_big = [r for r in results if not r.fits_shared]
    print(
        f"\n{len(results)} compiles ({', '.join(ARCH_NAMES[a] for a in archs)}); "
        f"{len(spilled)} with stack/spill bytes; "
        f"{len(too_big)} over the shared-memory limit; wgmma in {sum(r.wgmma for r in results)}"
    )
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in results], indent=1))
    for r in spilled:
        print(f"spill: {r.kernel} [{r.config}, hints={r.hints}] sm_{r.arch}: stack {r.stack_bytes}, "
              f"local {r.local_bytes} bytes", file=sys.stderr)  # fmt: skip
    return 1 if too_big or spilled else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="benchbed kernels", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="ops, backends, dtypes, devices").set_defaults(func=cmd_list)
    bench = sub.add_parser("bench", help="sweep shapes, dtypes, fwd / fwd+bwd; write kernels.parquet")
    bench.add_argument("--out", required=True, help="directory for kernels.parquet")
    bench.add_argument("--ops", default="", help="comma-separated op names or patterns (default: all)")
    bench.add_argument("--repeats", type=int, default=20, help="timed calls per case (median reported)")
    bench.add_argument(
        "--interpreter", action="store_true", help="without CUDA: also run Triton under the interpreter"
    )
    bench.add_argument("--cpu", action="store_true", help="run on the CPU even if CUDA is available")
    bench.set_defaults(func=cmd_bench)
    report = sub.add_parser(
        "report", help="AOT-compile every kernel configuration; registers, smem, spills, wgmma"
    )
    report.add_argument(
        "--arch", default="90,80", help="compute capabilities (default 90,80: H100/H200, A100)"
    )
    report.add_argument("--op", default="", help="only this op (pattern)")
    report.add_argument("--jobs", type=int, default=min(8, os.cpu_count() or 1), help="compile processes")
    report.add_argument("--json", default="", help="also write the results as JSON here")
    report.set_defaults(func=cmd_report)
    return parser


def cli_main(argv: list[str]) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: 0 for --help, 2 for bad usage
        return int(exc.code or 0)
    if getattr(args, "repeats", 1) < 1:
        return _fail(f"--repeats: must be >= 1, got {args.repeats}")
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(cli_main(sys.argv[1:]))
