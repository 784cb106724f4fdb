"""Every bad input is refused at load: exit 2, one line naming the file and the field, nothing written.

Each case is a scenario (or results directory) with one planted mistake, run through the real
command line in this process; no cell trains. Expected messages are matched, not just exit codes,
so a refusal that names the wrong field fails here.
"""

from __future__ import annotations

import json
import os
import re
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchbed import cli, plan
from benchbed.present import display, gate_cli, report_html
from benchbed.workloads.data import SHARD_MAGIC

BASE = """
name = "probe"
workload = "lm-tiny"
device = "cpu"
seeds = [0]
timeout_s = 60
{top}
[budget]
steps = 2
{rest}
"""


def shard(tokens, magic: int = SHARD_MAGIC, count: int | None = None, tail: bytes = b"") -> bytes:
    header = np.zeros(256, dtype=np.int32)
    header[:3] = (magic, 1, len(tokens) if count is None else count)
    return header.tobytes() + np.asarray(tokens, dtype=np.uint16).tobytes() + tail


def data(kind: str, path: str) -> str:
    return f'[data]\nkind = "{kind}"\npath = "{path}"\n'


TOKENS = np.arange(5000) % 32
TEXT = b"the quick brown fox jumps over the lazy dog. " * 200

#: id -> (scenario text or (text, {file: bytes}), extra argv, field, message regex)
CASES = {
    "include-lr-string": (BASE.format(top="", rest='[[include]]\nlr = "fast"'), [], "include[0].lr", "expected a number, got str 'fast'"),
    "include-lr-negative": (BASE.format(top="", rest="[[include]]\nlr = -1"), [], "include[0].lr", "must be positive, got -1"),
    "include-batch-zero": (BASE.format(top="", rest="[[include]]\nbatch_size = 0"), [], "include[0].batch_size", "must be positive, got 0"),
    "include-seed-negative": (BASE.format(top="", rest="[[include]]\nseed = -3"), [], "include[0].seed", "must be from 0 to 4294967295, got -3"),
    "exclude-lr-string": (BASE.format(top="", rest='[[exclude]]\nlr = "fast"'), [], "exclude[0].lr", "expected a number"),
    "option-nan": (BASE.format(top="", rest="[techniques.adamw]\neps = nan"), [], "techniques.adamw.eps", "must be a finite number, got nan"),
    "option-inf": (BASE.format(top="", rest="[techniques.adamw]\neps = inf"), [], "techniques.adamw.eps", "must be a finite number, got inf"),
    "option-axis-nan": (BASE.format(top="", rest='[matrix]\n"adamw.eps" = [1e-8, nan]'), [], "techniques.adamw.eps", "finite"),
    "seed-huge": (BASE.format(top="", rest="").replace("seeds = [0]", "seeds = [1000000000000000000000000000000]"), [], "seeds[0]", "does not fit in 64 bits"),
    "seed-over-32-bits": (BASE.format(top="", rest="").replace("seeds = [0]", "seeds = [4294967296]"), [], "seeds[0]", "must be from 0 to 4294967295"),
    "integer-literal-5000-digits": (BASE.format(top="", rest="").replace("seeds = [0]", "seeds = [" + "9" * 5000 + "]"), [], "toml", "4300 digits"),
    "timeout-1e10": (BASE.format(top="", rest="").replace("timeout_s = 60", "timeout_s = 1e10"), [], "timeout_s", "at most 604800 .7 days.*disable the timeout"),
    "timeout-inf": (BASE.format(top="", rest="").replace("timeout_s = 60", "timeout_s = inf"), [], "timeout_s", "must be positive"),
    "cells-100000-repeats": (BASE.format(top="repeats = 100000", rest=""), [], "matrix", "100,000 cells, more than the limit of 10,000.*--max-cells 100000"),
    "cells-100000-cli-repeat": (BASE.format(top="", rest=""), ["--repeat", "100000"], "matrix", "100,000 cells"),
    "cells-product": (BASE.format(top="", rest="[matrix]\nlr = [" + ", ".join(f"{i + 1}e-4" for i in range(101)) + "]\nbatch_size = [" + ", ".join(str(i + 1) for i in range(100)) + "]"), [], "matrix", "10,100 cells"),
    "name-empty": (BASE.format(top="", rest="").replace('"probe"', '""'), [], "name", "empty"),
    "name-only-slashes": (BASE.format(top="", rest="").replace('"probe"', '"///"'), [], "name", "no letter or digit"),
    "name-escape-sequence": (BASE.format(top="", rest="").replace('"probe"', '"\\u001b[2Jred"'), [], "name", r"control character '\\x1b'"),
    "option-string-control": (BASE.format(top="", rest="[matrix]\ntechniques = [\"adamw\"]\n\"adamw.eps\" = [\"a\\u0007\"]"), [], "matrix.adamw.eps[0]", "control character"),
    "device-cuda-without-cuda": (BASE.format(top="", rest="").replace('"cpu"', '"cuda"'), [], "device", "'cuda', but this machine cannot run it"),
    "device-cuda-flag": (BASE.format(top="", rest=""), ["--device", "cuda"], "--device", "'cuda', but this machine cannot run it"),
    "text-missing": ((BASE.format(top="", rest=data("text", "missing.txt")), {}), [], "data.path", "missing.txt: no such text file"),
    "text-empty": ((BASE.format(top="", rest=data("text", "e.txt")), {"e.txt": b""}), [], "data.path", r"e.txt: empty \(0 bytes"),
    "text-tiny": ((BASE.format(top="", rest=data("text", "t.txt")), {"t.txt": TEXT[:40]}), [], "data.path", "train split has 36 tokens, fewer than the 65 one sequence needs"),
    "text-directory": ((BASE.format(top="", rest=data("text", "d")), {"d/a.txt": TEXT}), [], "data.path", "d: is a directory, not a text file"),
    "text-dev-zero": ((BASE.format(top="", rest=data("text", "/dev/zero")), {}), [], "data.path", "/dev/zero: not a regular file"),
    "text-glob-nothing": ((BASE.format(top="", rest=data("text", "corpus/*.txt")), {}), [], "data.path", r"corpus/\*.txt: matches no file"),
    "shards-magic": ((BASE.format(top="", rest=data("shards", "a.bin")), {"a.bin": shard(TOKENS, magic=7)}), [], "data.path", "a.bin: header: magic is 7, expected 20240520"),
    "shards-short": ((BASE.format(top="", rest=data("shards", "a.bin")), {"a.bin": b"\0" * 100}), [], "data.path", "a.bin: header: file is 100 bytes, shorter than the 1024-byte header"),
    "shards-odd-length": ((BASE.format(top="", rest=data("shards", "a.bin")), {"a.bin": shard(TOKENS, tail=b"\1")}), [], "data.path", "a.bin: length: 10001 bytes after the header is not a whole number"),
    "shards-count": ((BASE.format(top="", rest=data("shards", "a.bin")), {"a.bin": shard(TOKENS, count=9000)}), [], "data.path", "a.bin: header: token count says 9000, file holds 5000"),
    "shards-vocabulary": ((BASE.format(top="", rest=data("shards", "a.bin")), {"a.bin": shard(np.arange(5000) % 40)}), [], "data.path", "a.bin: token id 39 is outside the model's vocabulary of 32"),
    "shards-too-few": ((BASE.format(top="", rest=data("shards", "a.bin")), {"a.bin": shard(np.arange(50) % 32)}), [], "data.path", "train split has 45 tokens"),
    "shards-glob-directories-only": ((BASE.format(top="", rest=data("shards", "shard*")), {"shard1/x": b""}), [], "data.path", r"shard\*: matches only 1 non-file"),
}  # fmt: skip


def write_case(root: Path, case) -> Path:
    text, files = case if isinstance(case, tuple) else (case, {})
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    scenario = root / "s.toml"
    scenario.write_text(textwrap.dedent(text))
    return scenario


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_scenario_is_refused_at_load(case, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text, extra, field, message = CASES[case]
    scenario = write_case(tmp_path, text)
    out = tmp_path / "out"
    code = cli.main(["run", str(scenario), "--out", str(out), *extra])
    line = one_line(capsys.readouterr().err)
    assert code == 2
    assert line.startswith(f"benchbed: {scenario}: {field}: "), line
    assert re.search(message, line), line
    assert not out.exists() and not (tmp_path / "results").exists()  # nothing written
    assert "\x1b" not in line and "\x07" not in line


def test_max_cells_lets_a_large_matrix_through(tmp_path):
    scenario = write_case(tmp_path, BASE.format(top="repeats = 10001", rest=""))
    with pytest.raises(plan.ScenarioError, match="10,001 cells"):
        plan.load(str(scenario))
    assert len(plan.load(str(scenario), max_cells=10_001).cells) == 10_001


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "file: larger than 1 MiB"),  # /dev/zero, read with a bound
        (b"# padding\n" * 120_000, "file: larger than 1 MiB"),
        (b"a = [" * 100_000, "toml: "),  # deeply nested: a one-line error, not a RecursionError
    ],
)
def test_scenario_file_is_read_with_a_bound(content, message, tmp_path, capsys):
    path = "/dev/zero" if content is None else tmp_path / "big.toml"
    if content is not None:
        path.write_bytes(content)
    assert cli.main(["run", str(path), "--dry-run"]) == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith(f"benchbed: {path}: ") and message in line


def test_a_directory_as_scenario_is_refused(tmp_path, capsys):
    assert cli.main(["run", str(tmp_path), "--dry-run"]) == 2
    assert one_line(capsys.readouterr().err) == f"benchbed: {tmp_path}: file: Is a directory"


@pytest.mark.parametrize(
    "name, directory",
    [
        ("/abs/dir", "abs_dir"),
        ("../../x", "x"),
        ("..", None),
        ("a/../../b", "a_.._.._b"),
        ("résumé run", "r_sum_run"),
        (".hidden", "hidden"),
        ("x" * 300, "x" * 80),
    ],
)
def test_scenario_name_becomes_one_directory_under_results(name, directory, tmp_path, capsys, monkeypatch):
    assert plan.slug(name) == (directory or "")
    monkeypatch.chdir(tmp_path)
    scenario = write_case(tmp_path, BASE.format(top="", rest="").replace('"probe"', json.dumps(name)))
    code = cli.main(["run", str(scenario), "--dry-run"])
    captured = capsys.readouterr()
    if directory is None:
        assert code == 2 and "name: '..' has no letter or digit" in one_line(captured.err)
        return
    assert code == 0
    target = Path("results") / directory
    assert f"-> {target} (" in captured.out
    assert len(target.parts) == 2 and ".." not in target.parts


def test_bad_thread_count_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("BENCHBED_THREADS", "two")
    scenario = write_case(tmp_path, BASE.format(top="", rest=""))
    assert cli.main(["run", str(scenario), "--out", str(tmp_path / "out")]) == 2
    assert "BENCHBED_THREADS: expected a whole number" in one_line(capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


def test_out_that_is_a_file_is_refused(tmp_path, capsys):
    scenario = write_case(tmp_path, BASE.format(top="", rest=""))
    (tmp_path / "out").write_text("")
    assert cli.main(["run", str(scenario), "--out", str(tmp_path / "out")]) == 2
    assert "--out: exists and is not a directory" in one_line(capsys.readouterr().err)


def test_out_inside_a_file_is_refused(tmp_path, capsys):
    scenario = write_case(tmp_path, BASE.format(top="", rest=""))
    (tmp_path / "f").write_text("")
    assert cli.main(["run", str(scenario), "--out", str(tmp_path / "f" / "out")]) == 2
    line = one_line(capsys.readouterr().err)
    assert line == f"benchbed: {tmp_path / 'f' / 'out'}: --out: cannot use it (Not a directory)"


def test_a_locked_results_directory_is_refused_naming_the_holder(tmp_path, capsys):
    from benchbed.run.lock import RunLock

    scenario = write_case(tmp_path, BASE.format(top="", rest=""))
    out = tmp_path / "out"
    out.mkdir()
    with RunLock(out):
        code = cli.main(["run", str(scenario), "--out", str(out)])
    line = one_line(capsys.readouterr().err)
    assert code == 2
    assert f"another benchbed run is writing here (PID {os.getpid()} on " in line
    assert sorted(p.name for p in out.iterdir()) == [".lock"]  # nothing else written


# -- gate, report and dashboard inputs ---------------------------------------------------------


def cells_table(n: int = 5, **overrides) -> pd.DataFrame:
    rows = []
    for seed in range(n):
        row = {
            "run_id": "r", "cell_id": f"c{seed}", "config_key": "k", "variant": "adamw", "techniques": "adamw",
            "scenario": "probe", "workload": "lm-tiny", "device": "cpu", "seed": seed, "repeat": 0,
            "baseline": "adamw", "is_baseline": True, "target_loss": 3.0, "status": "reached",
            "time_to_target_s": 10.0, "tokens_to_target": 64_000.0, "steps_to_target": 32.0,
            "final_val_loss": 0.6, "best_val_loss": 0.6, "tokens_per_s": 20_000.0,
            "energy_to_target_j": np.nan, "energy_j": np.nan, "energy_source": "unavailable",
            "peak_mem_bytes": 1e8,
        }  # fmt: skip
        row.update({k: (v(seed) if callable(v) else v) for k, v in overrides.items()})
        rows.append(row)
    return pd.DataFrame(rows)


def results_dir(path: Path, cells: pd.DataFrame, run_json=None, curves: pd.DataFrame | None = None) -> Path:
    path.mkdir(parents=True)
    cells.to_parquet(path / "cells.parquet")
    if curves is None:
        curves = pd.DataFrame(
            {"cell_id": cells["cell_id"], "step": 0, "tokens": 0, "train_time_s": 0.0, "energy_j": np.nan}
            | {"train_loss": np.nan, "val_loss": 3.4}
        )
    curves.to_parquet(path / "curves.parquet")
    pd.DataFrame(columns=["cell_id", "t_s"]).to_parquet(path / "telemetry.parquet")
    run = {"schema_version": 1, "run_id": "r", "scenario": "probe"} if run_json is None else run_json
    (path / "run.json").write_bytes(run if isinstance(run, bytes) else json.dumps(run).encode())
    return path


BAD_RESULTS = {
    "run-json-list": (dict(run_json=[1, 2]), "run.json: expected a JSON object, got list"),
    "run-json-truncated": (dict(run_json=b'{"schema_version": 1, "ru'), "run.json: not valid JSON"),
    "run-json-env-list": (dict(run_json={"schema_version": 1, "env": []}), "run.json: env: expected dict, got list"),
    "run-json-version-string": (dict(run_json={"schema_version": "1"}), "run.json: schema_version: expected int, got str"),
    "run-json-binary": (dict(run_json=b"\xff\xfe\x00"), "run.json: not valid JSON"),
    "cells-without-variant": (dict(drop="variant"), "cells.parquet: column variant missing"),
    "cells-without-seed": (dict(drop="seed"), "cells.parquet: column seed missing"),
    "curves-without-val-loss": (dict(curves=pd.DataFrame({"cell_id": ["c0"], "step": [0]})), "curves.parquet: column val_loss missing"),
}  # fmt: skip


def bad_results(tmp_path: Path, case: str) -> Path:
    options, _ = BAD_RESULTS[case]
    cells = cells_table()
    if "drop" in options:
        cells = cells.drop(columns=[options["drop"]])
    return results_dir(tmp_path / "bad", cells, options.get("run_json"), options.get("curves"))


@pytest.mark.parametrize("case", sorted(BAD_RESULTS))
def test_gate_refuses_bad_results_in_one_line(case, tmp_path, capsys):
    bad = bad_results(tmp_path, case)
    good = results_dir(tmp_path / "good", cells_table())
    for argv in ([str(bad), str(good)], [str(good), str(bad)]):
        assert gate_cli.cli_main(argv) == 2
        line = one_line(capsys.readouterr().err)
        assert line.startswith(f"benchbed gate: {bad}") and BAD_RESULTS[case][1] in line, line


@pytest.mark.parametrize("case", sorted(BAD_RESULTS))
def test_report_and_dashboard_name_the_bad_file_in_one_line(case, tmp_path, capsys):
    bad = bad_results(tmp_path, case)
    good = results_dir(tmp_path / "good", cells_table())
    loaded = display.load_for_display([str(bad), str(good)])
    assert len(loaded.errors) == 1 and BAD_RESULTS[case][1] in loaded.errors[0]
    assert len(loaded.cells) == 5  # the good directory is still shown
    assert report_html.cli_main([str(bad), str(good), "--html", str(tmp_path / "r.html")]) == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith("benchbed report: ") and BAD_RESULTS[case][1] in line


@pytest.mark.parametrize(
    "flag, target, message",
    [
        ("--json", "a-directory", "--json: {p}: is a directory"),
        ("--markdown", "a-file/gate.md", "--markdown: {p}: {parent} is not a folder"),
        ("--markdown", "missing/gate.md", "--markdown: {p}: {parent} does not exist"),
        ("--benchmark-action", "a-directory", "--benchmark-action: {p}: is a directory"),
    ],
)
def test_gate_refuses_an_unwritable_output_before_comparing(flag, target, message, tmp_path, capsys):
    base = results_dir(tmp_path / "base", cells_table())
    cand = results_dir(tmp_path / "cand", cells_table())
    (tmp_path / "a-directory").mkdir()
    (tmp_path / "a-file").write_text("")
    path = tmp_path / target
    code = gate_cli.cli_main([str(base), str(cand), flag, str(path)])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""  # nothing printed or written before the refusal
    assert one_line(captured.err) == "benchbed gate: " + message.format(p=path, parent=path.parent)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through file permissions")
def test_gate_refuses_a_read_only_output_folder(tmp_path, capsys):
    base = results_dir(tmp_path / "base", cells_table())
    locked = tmp_path / "ro"
    locked.mkdir(mode=0o500)
    assert gate_cli.cli_main([str(base), str(base), "--markdown", str(locked / "g.md")]) == 2
    assert "not writable" in one_line(capsys.readouterr().err)


def test_gate_markdown_escapes_hostile_variant_names(tmp_path):
    hostile = "adamw|<img src=x onerror=alert(1)>|[click](http://x.example) @here **bold**\n# h1 `code`"
    base = results_dir(tmp_path / "base", cells_table(variant=hostile))
    cand = results_dir(tmp_path / "cand", cells_table(variant=hostile))
    markdown = tmp_path / "gate.md"
    assert gate_cli.cli_main([str(base), str(cand), "--markdown", str(markdown)]) == 0
    text = markdown.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| lm")]
    # 11 columns (ruleset among them): 12 unescaped bars, no extra cell
    assert rows and all(line.count("|") - line.count("\\|") == 12 for line in rows)
    for raw in ("<img", "](http", "@here", "**bold**", "\n# h1", "`code`"):
        assert raw not in text, raw
    assert "&lt;img src=x onerror=alert\\(1\\)&gt;" in text


def test_gate_markdown_text_keeps_ordinary_labels_readable():
    escaped = gate_cli.markdown_text("lr_scaling[rule=sqrt] bs=64 lr=0.001")
    assert escaped == "lr\\_scaling\\[rule=sqrt\\] bs=64 lr=0\\.001"
