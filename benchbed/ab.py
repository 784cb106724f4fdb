"""Same-machine A/B: run a baseline and a candidate source tree interleaved in one job, then gate.

    benchbed ab SCENARIO --baseline-src main/ --candidate-src pr/ --out ab/ --pairs 5

On a shared CI machine two runs an hour apart differ by more than most regressions (neighbours,
thermal state, frequency scaling); only measurements interleaved in one job are comparable. Every
(configuration, seed) of the scenario is run ``--pairs`` times per side; unit ``k`` (one repeat of
one cell) runs baseline then candidate when ``k`` is even and candidate then baseline when it is
odd (A B B A A B ...), so a drift over the job loads both sides alike. Results go to
``OUT/baseline`` and ``OUT/candidate`` (ordinary results directories, resumable: a rerun skips the
cells already there), then ``benchbed gate`` compares them with the same options and exit codes.

Each side's cells run in subprocesses whose ``PYTHONPATH`` starts with an *import root* built
under ``OUT/.import/<side>``: a ``benchbed`` package of symlinks to the side's source tree,
including the folders that ``pyproject.toml`` maps into the namespace (``techniques/`` as
``benchbed.techniques``, ...). Plain ``PYTHONPATH=SRC`` would import the harness from SRC but the
mapped packages from whatever benchbed is installed, so a change to a technique would run on both
sides.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
from pathlib import Path

import tomllib

from benchbed import plan
from benchbed.present import gate_cli

PROG = "benchbed ab"
SIDES = ("baseline", "candidate")


class ABInputError(Exception):
    """Bad input; the message is the one line printed after ``benchbed ab: ``."""


def package_dirs(source: Path) -> dict[str, str]:
    """``benchbed.*`` package -> folder, from the source tree's pyproject (``{"benchbed": "benchbed"}``
    when it maps nothing)."""
    mapping = {"benchbed": "benchbed"}
    pyproject = source / "pyproject.toml"
    if pyproject.is_file():
        try:
            declared = tomllib.loads(pyproject.read_text())["tool"]["setuptools"]["package-dir"]
        except (KeyError, tomllib.TOMLDecodeError):
            declared = {}
        mapping.update({k: v for k, v in declared.items() if k == "benchbed" or k.startswith("benchbed.")})
    return mapping


def build_import_root(source: str | Path, root: str | Path) -> Path:
    """Make ``root/benchbed`` import the source tree's code the way an install of it would.

    ``root/benchbed`` is a real folder whose entries are symlinks to ``SOURCE/benchbed/*``; each
    mapped subpackage (``benchbed.techniques`` -> ``SOURCE/techniques``) is a symlink inside it.
    Returns ``root`` (the folder to put on ``PYTHONPATH``).
    """
    source = Path(source).resolve()
    root = Path(root)
    if not (source / "benchbed" / "__init__.py").is_file():
        raise ABInputError(f"{source}: not a benchbed source tree (no benchbed/__init__.py)")
    if root.exists():
        shutil.rmtree(root)
    mapping = package_dirs(source)
    package = root / "benchbed"
    package.mkdir(parents=True)
    for entry in sorted((source / mapping["benchbed"]).iterdir()):
        if entry.name != "__pycache__":
            (package / entry.name).symlink_to(entry)
    for name, folder in sorted(mapping.items()):
        parts = name.split(".")[1:]
        if not parts:
            continue
        target = package.joinpath(*parts)
        if target.is_symlink():
            target.unlink()
        if not target.parent.is_dir() or target.parent.is_symlink():
            continue  # nested under another mapped folder: that folder's own layout applies
        if (source / folder).is_dir():
            target.symlink_to(source / folder)
    return root


def interleaved_units(cells: list[plan.Cell], pairs: int) -> list[tuple[plan.Cell, tuple[str, str]]]:
    """(cell, side order) for every repeat of every (configuration, seed): A B, B A, A B, ..."""
    firsts = {}
    for cell in cells:  # one cell per (configuration, seed); the repeats are made here
        firsts.setdefault((cell.config_key, cell.seed), cell)
    units = []
    for repeat in range(pairs):
        for cell in firsts.values():
            order = SIDES if len(units) % 2 == 0 else SIDES[::-1]
            units.append((dataclasses.replace(cell, repeat=repeat), order))
    return units


def run_ab(
    scenario: plan.Scenario,
    baseline_src: str | Path,
    candidate_src: str | Path,
    out_dir: str | Path,
    *,
    pairs: int = 5,
    log=None,
) -> tuple[Path, Path]:
    """Run both sides interleaved; returns ``(OUT/baseline, OUT/candidate)``."""
    from benchbed.run.runner import run_scenario

    out_dir = Path(out_dir)
    say = log or (lambda message: print(message, file=sys.stderr, flush=True))
    sources = {"baseline": baseline_src, "candidate": candidate_src}
    environments = {}
    for side in SIDES:
        root = build_import_root(sources[side], out_dir / ".import" / side)
        inherited = os.environ.get("PYTHONPATH")
        path = str(root.resolve()) + (os.pathsep + inherited if inherited else "")
        environments[side] = {"PYTHONPATH": path}
    units = interleaved_units(scenario.cells, pairs)
    expanded = dataclasses.replace(scenario, cells=[cell for cell, _ in units])
    for index, (cell, order) in enumerate(units, start=1):
        for side in order:
            say(f"[{index}/{len(units)}] {side}: {cell.cell_id}")
            run_scenario(
                expanded,
                out_dir / side,
                cell_env=environments[side],
                cell_filter=lambda c, wanted=cell.cell_id: c.cell_id == wanted,
                progress=False,
                log=say,
            )
    return out_dir / "baseline", out_dir / "candidate"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Run a baseline and a candidate source tree interleaved on this machine, then gate.",
        epilog="Exit codes: 0 no regression, 1 regression (or insufficient data under --strict), 2 bad input.",
    )
    parser.add_argument("scenario", help="scenario file, or the name of a shipped one")
    parser.add_argument("--baseline-src", required=True, metavar="DIR", help="source tree of the baseline")
    parser.add_argument("--candidate-src", required=True, metavar="DIR", help="source tree of the candidate")
    parser.add_argument("--out", required=True, metavar="DIR", help="writes DIR/baseline and DIR/candidate")
    parser.add_argument(
        "--pairs",
        type=int,
        default=5,
        help="runs of every cell per side (default %(default)s; >= 5 for p < 0.01)",
    )
    parser.add_argument("--device", choices=plan.DEVICES, help="override the scenario's device")
    gate_cli.add_gate_options(parser)
    return parser


def cli_main(argv: list[str] | None = None) -> int:
    from benchbed.run.lock import Locked
    from benchbed.run.runner import ResultsWriteError, UnusableOutDir
    from benchbed.text import printable

    args = build_parser().parse_args(argv)
    try:
        if args.pairs < 1:
            raise ABInputError(f"--pairs: must be at least 1, got {args.pairs}")
        for flag, source in (("--baseline-src", args.baseline_src), ("--candidate-src", args.candidate_src)):
            if not (Path(source) / "benchbed" / "__init__.py").is_file():
                raise ABInputError(f"{source}: {flag}: not a benchbed source tree (no benchbed/__init__.py)")
        try:
            scenario = plan.load(plan.resolve_scenario_path(args.scenario), device_override=args.device)
        except plan.ScenarioError as error:
            raise ABInputError(str(error)) from error
        baseline_dir, candidate_dir = run_ab(
            scenario, args.baseline_src, args.candidate_src, args.out, pairs=args.pairs
        )
    except (ABInputError, Locked, UnusableOutDir) as error:
        print(f"{PROG}: {printable(str(error))}", file=sys.stderr)
        return 2
    except ResultsWriteError as error:
        print(f"{PROG}: {printable(str(error))}; run the same command again to resume", file=sys.stderr)
        return 1
    return gate_cli.run_gate(args, baseline_dir, candidate_dir, prog=PROG)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(cli_main())
