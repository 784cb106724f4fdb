"""The `benchbed` command: verbs and argument parsing.

Exit codes: 0 ok; 1 a failure (a cell that ended error, timeout, oom or killed; results that could
not be written) or a regression; 2 bad input (refused before anything runs or is written, one line
naming the file and field); 130 interrupted by Ctrl-C (143 by SIGTERM), finished cells kept.

What the verbs print lives in ``benchbed.present``: the ranked table ``run`` prints
(``present.ranked``), and ``gate`` and ``report``, which get the rest of the command line."""

from __future__ import annotations

import argparse
import importlib
import importlib.resources
import os
import subprocess
import sys
from pathlib import Path

EXIT_OK, EXIT_FAIL, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130
#: what `benchbed run --rank-by` accepts (benchbed.analyse.tables.METRICS, kept import-free here)
RANK_BY = (
    "time_to_target_s", "tokens_to_target", "energy_to_target_j", "peak_mem_bytes", "tokens_per_s",
    "saved_activation_bytes", "optimizer_state_bytes", "grad_bytes", "param_bytes",
)  # fmt: skip


def _say(message: str) -> None:
    from benchbed.text import printable

    print(f"benchbed: {printable(message)}", file=sys.stderr)


def _bad_input(message: str) -> int:
    _say(message)
    return EXIT_BAD_INPUT


def _check_threads_env() -> str | None:
    value = os.environ.get("BENCHBED_THREADS")
    if value and not (value.isascii() and value.isdigit() and 0 < int(value) <= 4096):
        return f"BENCHBED_THREADS: expected a whole number of threads from 1 to 4096, got {value!r}"
    return None


def cmd_run(args) -> int:
    from benchbed.run.zygote import ForkServer

    # the fork server imports torch and the worker while this process imports and plans
    # (started before the runner takes the results lock; an exec'd interpreter, so it could not
    # inherit the lock's close-on-exec descriptor anyway)
    server = ForkServer() if args.launcher == "fork" and not args.dry_run and args.backend != "ray" else None
    if server is not None:
        server.start()
    try:
        return _run(args, server)
    finally:
        if server is not None:
            server.close()


def _run(args, server) -> int:
    from benchbed import plan as planning
    from benchbed.measure import machine
    from benchbed.measure.carbon import CarbonError, grid_intensity
    from benchbed.present.ranked import print_ranked_table
    from benchbed.results import store
    from benchbed.results.schema import FAILED_STATUSES
    from benchbed.run import shards
    from benchbed.run.lock import Locked
    from benchbed.run.runner import (
        Interrupted,
        ResultsWriteError,
        UnusableOutDir,
        interrupt_on_sigterm,
        plan,
        run_scenario,
        select,
    )

    problem = _check_threads_env()
    if problem:
        return _bad_input(problem)
    if args.max_cells is not None and args.max_cells < 1:
        return _bad_input(f"--max-cells: must be at least 1, got {args.max_cells}")
    path = planning.resolve_scenario_path(args.scenario)
    try:
        scenario = planning.load(
            path,
            device_override=args.device,
            repeats_override=args.repeat,
            max_cells=args.max_cells,
            cpu=machine.cpu_capability(),
            ruleset_override=args.ruleset,
        )
        grid_intensity()  # a bad BENCHBED_GRID_INTENSITY fails here, not in every cell
        shard = shards.parse_shard(args.shard) if args.shard else None
    except (planning.ScenarioError, CarbonError, shards.ShardError) as exc:
        return _bad_input(str(exc))
    if args.backend != "ray" and (args.address or args.cpu_cells_per_node != 1 or args.num_cpus):
        return _bad_input("--address, --cpu-cells-per-node and --num-cpus need --backend ray")
    if args.cpu_cells_per_node < 1 or (args.num_cpus is not None and not args.num_cpus > 0):
        return _bad_input("--cpu-cells-per-node and --num-cpus must be positive")
    if shard is not None:
        scenario = shards.select(scenario, *shard)
    out_dir = Path(args.out or os.path.join("results", planning.slug(scenario.name)))
    if args.dry_run:
        todo, done = plan(scenario, out_dir, only=args.only, retry_failed=args.retry_failed)
        skip = {c.cell_id for c in done}
        label = f"{scenario.name} (shard {args.shard.strip()})" if shard is not None else scenario.name
        print(f"{label}: {len(todo) + len(done)} cell(s) -> {out_dir} ({len(done)} already done)")
        for c in todo + done:
            budget = ", ".join(
                f"{k}={v}"
                for k, v in (
                    ("tokens", c.budget_tokens),
                    ("steps", c.budget_steps),
                    ("seconds", c.budget_seconds),
                )
                if v
            )
            mark = "done" if c.cell_id in skip else "todo"
            tuned = ""
            if c.ruleset == "external":
                values = " ".join(f"{k}={v:g}" for k, v in sorted(c.tuned.items()))
                tuned = f" ruleset=external study={c.study} trial={c.trial}" + (
                    f" tuned({values})" if values else ""
                )
            print(
                f"  [{mark}] {c.cell_id}  workload={c.workload} techniques={c.techniques_label} seed={c.seed} "
                f"repeat={c.repeat} batch_size={c.batch_size} lr={c.lr:g} target={c.target_loss:g} budget({budget}) device={c.device}"
                + (f" threads={c.threads}" if c.threads else "")
                + tuned
            )
        return EXIT_OK
    if out_dir.exists() and not out_dir.is_dir():
        return _bad_input(f"{out_dir}: --out: exists and is not a directory")

    def kept() -> str:
        n = len(store.read_parts(out_dir)) if out_dir.is_dir() else 0
        return f"{n} finished cell(s) are kept in {out_dir}; run the same command again to resume"

    extra = {"shard": args.shard.strip()} if shard is not None else {}
    lost = []
    try:
        with interrupt_on_sigterm():
            if args.backend == "ray":
                try:
                    import ray  # noqa: F401

                    from benchbed.run.ray_backend import RayConnectError, run_scenario_ray
                except ImportError:
                    return _bad_input("--backend ray: Ray is not installed (pip install 'benchbed[ray]')")
                try:
                    lost = run_scenario_ray(
                        scenario, out_dir, address=args.address, only=args.only, retry_failed=args.retry_failed,
                        cpu_cells_per_node=args.cpu_cells_per_node, num_cpus=args.num_cpus,
                        progress=not args.quiet, extra_meta=extra,
                    ).lost  # fmt: skip
                except RayConnectError as exc:
                    return _bad_input(str(exc))
            else:
                run_scenario(
                    scenario, out_dir, only=args.only, retry_failed=args.retry_failed, progress=not args.quiet,
                    launcher=args.launcher, fork_server=server,
                )  # fmt: skip
                if extra:
                    store.atomic_write_json(
                        out_dir / store.RUN_JSON, {**store.read_run_json(out_dir), **extra}
                    )
    except (Locked, UnusableOutDir) as exc:
        return _bad_input(str(exc))
    except ResultsWriteError as exc:
        _say(f"{exc}; {kept()}")
        return EXIT_FAIL
    except KeyboardInterrupt as exc:
        signum = exc.signum if isinstance(exc, Interrupted) else 2
        _say(
            f"interrupted ({'Ctrl-C' if signum == 2 else 'SIGTERM'}): the running cell was stopped; {kept()}"
        )
        return 128 + signum
    if not scenario.cells:  # an empty shard: its directory exists (merge accepts it), nothing ran
        _say(f"{scenario.name} (shard {args.shard.strip()}): no cell hashes to this shard")
        return EXIT_OK
    try:
        results = store.load(out_dir)
    except store.StoreError as exc:
        _say(str(exc))
        return EXIT_FAIL
    cells = results.cells
    cells = cells[cells["cell_id"].isin({c.cell_id for c in select(scenario.cells, args.only)})]
    ranking = "time-to-target" if args.rank_by == "time_to_target_s" else f"ranked by {args.rank_by}"
    print_ranked_table(
        cells, f"{scenario.name}: {ranking}, ruleset {scenario.ruleset} ({out_dir})", rank_by=args.rank_by
    )
    if lost:
        _say(f"{len(lost)} cell(s) lost with their Ray worker; run again to resume")
        return EXIT_FAIL
    failed = cells[cells["status"].isin(FAILED_STATUSES)] if "status" in cells else cells.iloc[:0]
    if len(failed):
        counts = ", ".join(f"{n} {status}" for status, n in failed["status"].value_counts().items())
        _say(
            f"{len(failed)} of {len(cells)} cell(s) produced no measurement ({counts}); see the 'status' "
            f"and 'error' columns of {out_dir / store.CELLS}; --retry-failed runs them again"
        )
        return EXIT_FAIL
    return EXIT_OK


def cmd_list(args) -> int:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(120, Console().width))
    if args.what == "techniques":
        from benchbed.techniques import CATEGORIES, REGISTRY

        table = Table(title="techniques")
        for col in ("name", "category", "paper", "what it does"):
            table.add_column(col)
        for name, cls in sorted(REGISTRY.items(), key=lambda kv: (CATEGORIES.index(kv[1].category), kv[0])):
            table.add_row(name, cls.category, cls.paper, cls.describe())
        console.print(table)
    elif args.what == "workloads":
        from benchbed.workloads import WORKLOADS

        table = Table(title="workloads")
        for col in ("name", "model", "data", "batch", "budget tokens", "target loss", "description"):
            table.add_column(col)
        for w in WORKLOADS.values():
            table.add_row(
                w.name,
                w.describe_model(),
                w.data_label,
                str(w.batch_size),
                f"{w.budget_tokens:,}",
                f"{w.target_loss:g}",
                w.description,
            )
        console.print(table)
    else:
        kernels = importlib.import_module("benchbed.kernels")
        table = Table(title="kernels")
        rows = kernels.describe_kernels()
        for col in rows[0].keys() if rows else ("op",):
            table.add_column(col)
        for r in rows:
            table.add_row(*(", ".join(v) if isinstance(v, (list, tuple)) else str(v) for v in r.values()))
        console.print(table)
    return EXIT_OK


def cmd_env(args) -> int:
    import platform

    import torch

    from benchbed.measure import machine

    print(
        f"python {platform.python_version()}  torch {torch.__version__}  cpu threads {torch.get_num_threads()}"
    )
    print(
        f"cuda: {'available: ' + ', '.join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())) if torch.cuda.is_available() else 'not available'}"
    )
    try:
        import triton

        print(
            f"triton {triton.__version__} ({'GPU kernels' if torch.cuda.is_available() else 'CPU: auto uses the PyTorch reference; Triton kernels run only under the interpreter (tests, kernels bench --interpreter)'})"
        )
    except ImportError:
        print("triton: not installed (kernels use the PyTorch reference)")
    from benchbed.techniques import REGISTRY

    cap = machine.cpu_capability()
    line, precisions = machine.describe_cpu(cap)
    print(f"cpu: {line}")
    for precision, state in precisions.items():
        users = sorted(n for n, cls in REGISTRY.items() if cls.precision == precision)
        note = ""
        if users and cap["precision"][precision] != "native":
            note = f": {', '.join(users)} refused on CPU cells unless allow_emulated = true"
        print(f"  {precision}: {state}{note}")
    print("what this machine can measure:")
    for item in machine.describe_environment():
        state = "yes" if item.get("available") else "no "
        detail = item.get("source") if item.get("available") else item.get("reason")
        print(f"  [{state}] {item.get('quantity')}: {detail}")
    return EXIT_OK


def cmd_dashboard(args) -> int:
    dirs = [Path(d) for d in args.dirs]
    for d in dirs:
        if not d.is_dir():
            return _bad_input(f"{d}: not a results directory (it does not exist)")
    app = importlib.resources.files("benchbed.dashboard") / "app.py"
    env = {**os.environ, "BENCHBED_RESULTS": os.pathsep.join(str(d.resolve()) for d in dirs)}
    cmd = [
        sys.executable, "-m", "streamlit", "run", str(app),
        "--server.address", args.host, "--server.port", str(args.port),
        "--server.headless", "true", "--browser.gatherUsageStats", "false", "--client.toolbarMode", "minimal",
    ]  # fmt: skip
    print(
        f"benchbed dashboard: http://{args.host}:{args.port}  ({len(dirs)} results director{'y' if len(dirs) == 1 else 'ies'})"
    )
    try:
        return subprocess.call(cmd, env=env)
    except KeyboardInterrupt:
        return EXIT_OK


DELEGATED = {
    "gate": ("benchbed.present.gate_cli", "compare two results directories; exit 1 on a regression"),
    "report": ("benchbed.present.report_html", "write a self-contained HTML report of results directories"),
    "kernels": ("benchbed.kernels.cli", "kernel sweep (bench), compile report (report), list"),
    "merge": ("benchbed.present.merge_cli", "merge results directories (shards, Ray runs) into one"),
    "history": (
        "benchbed.present.history_cli",
        "each configuration's metrics across runs, by commit and time",
    ),
    "export": ("benchbed.present.export.cli", "export results to MLflow, TensorBoard or W&B (offline)"),
    "profile": ("benchbed.present.profile_cli", "record a profiler trace of cells, outside the timed run"),
    "ab": ("benchbed.ab", "same-machine A/B: baseline and candidate source trees, interleaved"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="benchbed",
        description="Benchmark efficient-transformer-training techniques by time and energy to a target loss.",
    )
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = sub.add_parser(
        "run",
        help="run a scenario matrix (default: the embedded quick scenario)",
        description="Run every cell of a scenario in its own process and print the ranked table. Cells already in --out are skipped (resume).",
    )
    p.add_argument(
        "scenario",
        nargs="?",
        help="scenario file, or the name of a shipped one (quick, optimizers, ...); default: quick",
    )
    p.add_argument("--out", help="results directory (default: results/<scenario name>)")
    p.add_argument(
        "--only", metavar="PATTERN", help="run only cells whose id or variant matches (glob or substring)"
    )
    p.add_argument("--dry-run", action="store_true", help="print the expanded cells and exit")
    p.add_argument(
        "--retry-failed",
        action="store_true",
        help="re-run cells that ended in oom, error, timeout or killed (killed ones run again anyway)",
    )
    p.add_argument(
        "--max-cells",
        type=int,
        metavar="N",
        help="allow a matrix of more than 10,000 cells (refused without this: usually a typo)",
    )
    p.add_argument(
        "--shard",
        metavar="I/N",
        help="run only shard I of N (0 <= I < N; by a hash of the cell id; docs/scaling.md)",
    )
    p.add_argument(
        "--backend", choices=("local", "ray"), default="local", help="where cells run (default local)"
    )
    p.add_argument("--address", help="--backend ray: the cluster's address (default: a new local cluster)")
    p.add_argument(
        "--cpu-cells-per-node", type=int, default=1, metavar="K",
        help="--backend ray: CPU cells run at once per node (default 1: co-running cells skew time and RAPL)",
    )  # fmt: skip
    p.add_argument("--num-cpus", type=float, metavar="N", help="--backend ray: CPUs reserved per cell")
    p.add_argument(
        "--rank-by",
        default="time_to_target_s",
        choices=list(RANK_BY),
        help="metric the printed table ranks by (default: time_to_target_s; memory: saved_activation_bytes, "
        "optimizer_state_bytes, grad_bytes, param_bytes)",
    )
    p.add_argument(
        "--repeat",
        type=int,
        metavar="K",
        help="run each (configuration, seed) K times (for noisy-metric statistics)",
    )
    p.add_argument("--device", choices=("cpu", "cuda", "auto"), help="override the scenario's device")
    p.add_argument(
        "--ruleset",
        choices=("external", "defaults"),
        help="override the scenario's tuning ruleset: 'defaults' runs a tuned scenario once per seed at "
        "paper defaults (results in results/<name>-defaults); see docs/tuning.md",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--launcher",
        choices=("fork", "subprocess"),
        default="fork",
        help="fork: each cell a fresh process forked from a server that imported torch once (default; "
        "a new interpreter where a fork would differ); subprocess: a new interpreter for every cell",
    )
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "list", help="list techniques, workloads or kernels", description="List what benchbed knows."
    )
    p.add_argument("what", choices=("techniques", "workloads", "kernels"))
    p.set_defaults(func=cmd_list)

    p = sub.add_parser(
        "env",
        help="what this machine can measure",
        description="Print devices, versions and which sensors (power, energy, memory) this machine can read, and why not.",
    )
    p.set_defaults(func=cmd_env)

    p = sub.add_parser(
        "dashboard",
        help="open the Streamlit dashboard on results directories",
        description="Serve the dashboard for one or more results directories (read-only).",
    )
    p.add_argument("dirs", nargs="+", metavar="DIR")
    p.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)"
    )
    p.add_argument("--port", type=int, default=8501)
    p.set_defaults(func=cmd_dashboard)

    for verb, (_, help_text) in DELEGATED.items():
        p = sub.add_parser(verb, help=help_text, add_help=False, prefix_chars="\x00")
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(func=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv and argv[0] in DELEGATED:
            module = importlib.import_module(DELEGATED[argv[0]][0])
            return int(module.cli_main(argv[1:]) or 0)
        parser = build_parser()
        args = parser.parse_args(argv)
        return int(args.func(args) or 0)
    except BrokenPipeError:  # `benchbed run --dry-run | head`: the reader left, nothing is wrong
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except KeyboardInterrupt as exc:  # before anything was written (loading, importing)
        signum = getattr(exc, "signum", 2)
        _say(f"interrupted ({'Ctrl-C' if signum == 2 else 'SIGTERM'})")
        return 128 + signum


if __name__ == "__main__":
    sys.exit(main())
