"""The design, held by tests: the one-way import rule between layers, every shipped scenario loads
and dry-runs, the result row's declared columns are what a cell writes, and docs/contracts.md lists
exactly the declared columns."""

from __future__ import annotations

import ast
import importlib.resources
import io
import re
from contextlib import redirect_stdout
from pathlib import Path

import pytest

from benchbed import cli, plan
from benchbed.results import schema

ROOT = Path(__file__).resolve().parents[1]

# A module may import only from its own layer and the layers before it (docs/architecture.md).
LAYERS: list[tuple[str, ...]] = [
    ("benchbed", "benchbed.results.schema", "benchbed.text"),
    ("benchbed.models",),
    ("benchbed.workloads",),
    ("benchbed.kernels",),
    ("benchbed.techniques",),
    ("benchbed.plan",),
    ("benchbed.measure",),
    ("benchbed.results",),
    ("benchbed.worker",),
    ("benchbed.run",),
    ("benchbed.analyse",),
    ("benchbed.present",),
    ("benchbed.ab", "benchbed.cli", "benchbed.dashboard", "benchbed.scenarios"),
]
# source folders and the package each installs as (pyproject's package-dir)
SOURCE_DIRS = {
    "benchbed": "benchbed",
    "techniques": "benchbed.techniques",
    "kernels": "benchbed.kernels",
    "dashboard": "benchbed.dashboard",
}


def layer_of(module: str) -> int:
    """Index of the layer a module belongs to: the longest listed prefix."""
    best, best_len = None, -1
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            exact_root = prefix == "benchbed"
            matches = module == prefix if exact_root else module == prefix or module.startswith(prefix + ".")
            if matches and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    if best is None:
        raise KeyError(f"{module}: in no layer of tests/test_contracts.py LAYERS")
    return best


def module_name(root: Path, path: Path) -> str:
    rel = path.relative_to(root)
    top = SOURCE_DIRS[rel.parts[0]]
    parts = [top, *rel.parts[1:]]
    parts[-1] = parts[-1].removesuffix(".py")
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imported_modules(tree: ast.AST, exists) -> list[tuple[int, str]]:
    """(line, module) of every benchbed import outside `if TYPE_CHECKING:` blocks. `from benchbed
    import x` counts as importing benchbed.x where that module exists, else the root."""
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend((node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "benchbed")
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "benchbed":
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                found.append((node.lineno, candidate if exists(candidate) else node.module))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def back_edges(root: Path) -> list[str]:
    """Every import of a later layer, as 'file:line: importer (layer) -> imported (layer)'."""
    modules: dict[str, Path] = {}
    for folder in SOURCE_DIRS:
        for path in sorted((root / folder).rglob("*.py")):
            modules[module_name(root, path)] = path

    def exists(name: str) -> bool:
        return name in modules

    problems = []
    for name, path in modules.items():
        own = layer_of(name)
        for line, target in imported_modules(ast.parse(path.read_text()), exists):
            if layer_of(target) > own:
                problems.append(
                    f"{path.relative_to(root)}:{line}: {name} (layer {own}) -> {target} (layer {layer_of(target)})"
                )
    return problems


def test_no_module_imports_a_later_layer():
    assert back_edges(ROOT) == []


def test_the_import_rule_catches_a_planted_back_edge(tmp_path):
    for folder in SOURCE_DIRS:
        (tmp_path / folder).mkdir()
    (tmp_path / "benchbed" / "plan").mkdir()
    (tmp_path / "benchbed" / "run").mkdir()
    (tmp_path / "benchbed" / "run" / "runner.py").write_text("X = 1\n")
    (tmp_path / "benchbed" / "plan" / "cell.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from benchbed.run import runner\n"
        "def f():\n    from benchbed.run.runner import X\n"
    )
    (problems,) = back_edges(tmp_path)  # the TYPE_CHECKING import is allowed, the lazy one is not
    assert "benchbed/plan/cell.py:5: benchbed.plan.cell" in problems and "benchbed.run.runner" in problems


def test_every_package_module_has_a_layer():
    for folder in SOURCE_DIRS:
        for path in (ROOT / folder).rglob("*.py"):
            layer_of(module_name(ROOT, path))


LONG_FILE_LINES = 500


def test_no_module_is_long_without_saying_why():
    """A module over 500 lines says why in its docstring (a line containing 'longer than')."""
    long = []
    for folder in SOURCE_DIRS:
        for path in (ROOT / folder).rglob("*.py"):
            text = path.read_text()
            if text.count("\n") > LONG_FILE_LINES and "longer than" not in (
                ast.get_docstring(ast.parse(text)) or ""
            ):
                long.append(str(path.relative_to(ROOT)))
    assert long == []


# -- scenarios ----------------------------------------------------------------------------------------
SHIPPED = sorted(
    p.name for p in importlib.resources.files("benchbed.scenarios").iterdir() if p.name.endswith(".toml")
)


def _device_of(name: str) -> str:
    return "cuda" if name.endswith("-gpu.toml") else "cpu"


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_scenario_loads_and_dry_runs(name, tmp_path, monkeypatch):
    import torch

    if _device_of(name) == "cuda":
        # checked as on a machine with GPUs: techniques refuse cells by device count at load
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    path = plan.resolve_scenario_path(name)
    scenario = plan.load(path, device_override=_device_of(name))
    assert scenario.cells and scenario.baseline in {c.variant for c in scenario.cells}
    out = io.StringIO()
    with redirect_stdout(out):
        code = cli.main(
            ["run", name, "--dry-run", "--device", _device_of(name), "--out", str(tmp_path / "r")]
        )
    assert code == 0
    assert f"{len(scenario.cells)} cell(s)" in out.getvalue()
    assert not (tmp_path / "r").exists()  # a dry run writes nothing


# -- the result row -----------------------------------------------------------------------------------
def test_a_real_cell_writes_every_declared_column_and_nothing_else(tiny_scenario):
    from benchbed.worker.cell import train_cell

    (cell, *_) = plan.load(tiny_scenario(combos='["adamw"]', seeds="[0]")).cells
    row, curves, telemetry = train_cell(cell.to_spec())
    assert schema.undeclared(row) == []
    assert set(row) == set(schema.CELL_COLUMN_NAMES)
    assert list(curves.columns) == schema.CURVE_COLUMN_NAMES
    assert set(schema.TELEMETRY_COLUMN_NAMES) <= set(telemetry.columns)
    written = {k for k, v in row.items() if v is not None and not (isinstance(v, float) and v != v)}
    # what a CPU cell cannot measure stays empty; everything else is written
    not_on_cpu = {
        "error", "time_to_target_s", "tokens_to_target", "steps_to_target", "energy_to_target_j",
        "energy_j", "energy_integral_j", "energy_disagreement", "mean_power_w", "peak_power_w",
        "idle_power_w", "net_energy_j", "max_memory_reserved_bytes", "nvml_peak_used_bytes", "mfu", "hfu",
        "sample_lag_p99_s", "run_id", "git_sha", "telemetry_window_s", "co2_kg",
        "emulated_precision",  # None unless a precision ran emulated (allow_emulated)
    }  # fmt: skip
    not_under_defaults = {"study", "trial", "tuned_json"}  # a tuning trial's (tests/test_tuning.py)
    stages_only = {c.name for c in schema.CELL_COLUMNS if c.group == "stages"}  # bases, pipelines
    # what applies only to some cells: a pipeline's bubble, a bad exit after the row was written
    not_this_cell = {"pipeline_bubble", "pipeline_idle_frac", "teardown_error"}
    assert (
        set(schema.CELL_COLUMN_NAMES) - written
        <= not_on_cpu | not_under_defaults | stages_only | not_this_cell
    )


def test_new_row_refuses_an_undeclared_column():
    with pytest.raises(KeyError, match="undeclared result column"):
        schema.new_row(time_to_target=1.0)


def test_docs_contracts_lists_exactly_the_declared_columns():
    text = (ROOT / "docs" / "contracts.md").read_text()
    begin, end = (
        "<!-- columns: begin (generated by python -m benchbed.results.schema) -->",
        "<!-- columns: end -->",
    )
    assert begin in text and end in text
    documented = text.split(begin, 1)[1].split(end, 1)[0]
    assert documented.strip() == schema.markdown().strip()
    names = re.findall(r"^\| `([a-z0-9_]+)` \|", documented, flags=re.M)
    assert names == schema.CELL_COLUMN_NAMES + schema.CURVE_COLUMN_NAMES + schema.TELEMETRY_COLUMN_NAMES
