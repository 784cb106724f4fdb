"""Scenario validation: every mistake is one line `FILE: field: what is wrong`, exit 2, nothing runs."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from benchbed import plan

GOOD = """
workload = "lm-tiny"
seeds = [0, 1]
[budget]
steps = 5
[matrix]
techniques = ["adamw", "adamw+bf16_autocast"]
"""

# (scenario text, expected "field: message" fragment)
MALFORMED = [
    ('workload = "lm-tiny"\nsedes = [0]\n', "sedes: unknown key (did you mean 'seeds'?)"),
    ('workload = "lm-tyni"\n', "workload[0]: unknown workload 'lm-tyni' (did you mean 'lm-tiny'?)"),
    (
        '[matrix]\ntechniques = ["adamw", "adamw+bf16_autocats"]\n',
        "matrix.techniques[1]: unknown technique 'bf16_autocats' (did you mean 'bf16_autocast'?)",
    ),
    ('seeds = "zero"\n', "seeds[0]: expected an integer, got str 'zero'"),
    ("[budget]\ntokens = -5\n", "budget.tokens: must be positive, got -5"),
    ("[budget]\ntokens = 1.5\n", "budget.tokens: expected an integer, got float 1.5"),
    ("[matrix]\ntechniques = []\n", "matrix.techniques: empty list: the matrix would have no cells"),
    ("[budget]\nminutes = 3\n", "budget.minutes: unknown key"),
    ('device = "tpu"\n', "device: unknown device 'tpu' (cpu, cuda, auto)"),
    ("timeout_s = 0\n", "timeout_s: must be positive, got 0"),
    ("[techniques.adamw]\nbeta1 = 1.5\n", "techniques.adamw: beta1: must be in [0, 1), got 1.5"),
    ('[techniques.adamw]\nlr = "fast"\n', "techniques.adamw.lr: expected float, got str ('fast')"),
    (
        "[techniques.adamw]\nmomentum = 0.9\n",
        "techniques.adamw.momentum: unknown option of technique 'adamw'",
    ),
    (
        '[matrix]\ntechniques = ["adamw"]\n[[exclude]]\ntechniques = "adamw"\n',
        "matrix: no cells: every cell was excluded",
    ),
    (
        'baseline = "adamw+bf16_autocast"\n',
        "baseline: 'adamw+bf16_autocast' is not a configuration of this scenario",
    ),
    ("[matrix]\nbatch_size = [32, 0]\n", "matrix.batch_size[1]: must be positive, got 0"),
    ("[matrix]\nfoo = [1]\n", "matrix.foo: unknown axis"),
    ('[matrix]\ntechniques = ["adamw+adamw"]\n', "technique listed twice"),
    ("stop_at_target = 1\n", "stop_at_target: expected true or false, got int 1"),
    ('[data]\nkind = "text"\n', "data.path: a file or glob pattern is required"),
    ("seeds = [0, 0]\n", "seeds: seed listed twice in [0, 0]"),
    ("workload = \n", "toml: "),
    ("threads = 0\n", "threads: must be positive, got 0"),
    ('threads = "two"\n', "threads: expected an integer, got str 'two'"),
    ("", "file: nothing to run: the scenario has no keys (empty or comments only)"),
    ("# a scenario\n\n# nothing but comments\n", "file: nothing to run: the scenario has no keys"),
    ('name = "mine"\ndescription = "later"\n', "file: nothing to run: the scenario gives only a name"),
]


@pytest.mark.parametrize("text,expected", MALFORMED, ids=[m[1].split(":")[0] for m in MALFORMED])
def test_malformed_scenario_gives_one_line_naming_file_and_field(tmp_path, text, expected):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(plan.ScenarioError) as info:
        plan.load(str(path))
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert expected in message
    assert "\n" not in message


def test_two_optimizers_in_one_cell_are_refused(tmp_path, monkeypatch):
    from benchbed.techniques import REGISTRY
    from benchbed.techniques.base import Technique

    class OtherOpt(Technique):
        name, category, paper = "other_opt", "compute/optimizer", "test"
        provides_optimizer = True

    monkeypatch.setitem(REGISTRY, "other_opt", OtherOpt)
    path = tmp_path / "two.toml"
    path.write_text('[matrix]\ntechniques = ["adamw+other_opt"]\n')
    with pytest.raises(plan.ScenarioError, match="two optimizers in one cell: adamw and other_opt"):
        plan.load(str(path))


def test_conflicting_techniques_are_refused(tmp_path, monkeypatch):
    from benchbed.techniques import REGISTRY
    from benchbed.techniques.base import Technique

    class Picky(Technique):
        name, category, paper = "picky", "compute/initialization", "test"
        conflicts = ("bf16_autocast",)

    monkeypatch.setitem(REGISTRY, "picky", Picky)
    path = tmp_path / "c.toml"
    path.write_text('[matrix]\ntechniques = ["picky+bf16_autocast"]\n')
    with pytest.raises(plan.ScenarioError, match="'picky' cannot be combined with 'bf16_autocast'"):
        plan.load(str(path))


def test_matrix_is_the_product_of_axes_with_include_and_exclude(tmp_path):
    path = tmp_path / "m.toml"
    path.write_text(
        textwrap.dedent(
            """
            seeds = [0, 1]
            device = "cpu"
            [budget]
            steps = 3
            [matrix]
            techniques = ["adamw", "adamw+bf16_autocast"]
            batch_size = [16, 32]
            "adamw.eps" = [1e-8, 1e-6]
            [[exclude]]
            techniques = "adamw+bf16_autocast"
            batch_size = 16
            [[include]]
            techniques = "activation_checkpointing"
            seed = 7
            """
        )
    )
    sc = plan.load(str(path))
    # 2 combos x 2 batch sizes x 2 eps x 2 seeds = 16, minus 4 excluded, plus 2 included (eps axis)
    assert len(sc.cells) == 16 - 4 + 2
    assert len({c.cell_id for c in sc.cells}) == len(sc.cells)
    included = [c for c in sc.cells if "activation_checkpointing" in c.techniques]
    assert {c.seed for c in included} == {7}
    assert all(c.techniques == ("adamw", "activation_checkpointing") for c in included)  # lifecycle order
    # seeds share a config_key; configurations differ
    keys = {(c.config_key, c.seed) for c in sc.cells}
    assert len(keys) == len(sc.cells)
    assert sc.baseline == "adamw[eps=1e-08] bs=16"  # the first configuration, options from axes shown


def test_implicit_adamw_and_lifecycle_order(tmp_path):
    path = tmp_path / "o.toml"
    path.write_text('[matrix]\ntechniques = ["bf16_autocast"]\n')
    (cell,) = plan.load(str(path)).cells
    assert cell.techniques == ("adamw", "bf16_autocast")
    assert cell.techniques_label == "adamw+bf16_autocast"


def test_cli_bad_scenario_exits_2_with_one_line_and_writes_nothing(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('workload = "lm-tiny"\n[matrix]\ntechniques = ["adamw+nope"]\n')
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "benchbed.cli", "run", str(path), "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{path}: matrix.techniques[0]: unknown technique 'nope'" in lines[0]
    assert not out.exists()


def test_shipped_default_scenario_is_valid():
    sc = plan.load(plan.default_scenario_path(cuda=False))
    combos = {c.techniques_label for c in sc.cells}
    # three combinations, one seed: six cells took 227 s on a quiet 2-core AVX2-only CPU (over 3 min)
    assert len(combos) >= 3 and len(sc.cells) == len(combos)
    assert all(c.stop_at_target and c.threads == 1 for c in sc.cells)
    assert sc.baseline == "adamw"


def test_good_scenario_loads(tmp_path):
    path = tmp_path / "g.toml"
    path.write_text(GOOD)
    assert len(plan.load(str(path)).cells) == 4


def test_threads_is_part_of_the_configuration_only_when_given(tmp_path, monkeypatch):
    import json

    from benchbed.worker import __main__ as worker

    path = tmp_path / "t.toml"
    path.write_text(GOOD)
    unset = plan.load(str(path)).cells[0]
    path.write_text("threads = 1\n" + GOOD)
    pinned = plan.load(str(path)).cells[0]
    assert unset.threads is None and "threads" not in unset.config()  # keys of existing cells unchanged
    assert pinned.threads == 1 and pinned.config_key != unset.config_key
    assert plan.Cell.from_spec(pinned.to_spec()).threads == 1

    # the cell's process sets the scenario's threads, over BENCHBED_THREADS
    calls = []
    monkeypatch.setattr(worker.torch, "set_num_threads", calls.append)
    monkeypatch.setattr(worker, "train_cell", lambda spec, **kw: (_ for _ in ()).throw(SystemExit(0)))
    monkeypatch.setenv("BENCHBED_THREADS", "2")
    for cell, expected in ((pinned, 1), (unset, 2)):
        spec = tmp_path / "spec.json"
        spec.write_text(json.dumps(cell.to_spec()))
        with pytest.raises(SystemExit):
            worker.main([str(spec), str(tmp_path / "out")])
        assert calls.pop() == expected
