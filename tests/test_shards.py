"""Shards and merge: a shard is chosen by a hash of the cell id (stable whatever else the matrix
holds), shards run separately and merged equal one unsharded run, and merge refuses a cell id whose
results differ, writing nothing."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest

from benchbed import plan
from benchbed.cli import main
from benchbed.results import store
from benchbed.results.merge import MergeError, merge
from benchbed.results.schema import new_row
from benchbed.run import shards

#: metrics a fixed seed reproduces on the CPU: they must survive sharding and merging unchanged
#: shard_of("cell-0".."cell-11", 4), computed once
PINNED = [2, 2, 1, 0, 2, 3, 2, 2, 0, 3, 0, 0]
DETERMINISTIC = [
    "status",
    "final_val_loss",
    "best_val_loss",
    "steps",
    "tokens",
    "steps_to_target",
    "tokens_to_target",
]


def cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "benchbed.cli", *args], capture_output=True, text=True, **kw)


@pytest.mark.parametrize(
    "text, error",
    [
        ("1/2", None),
        ("0/1", None),
        ("2/2", "I must be in 0..1"),
        ("0/0", "N must be >= 1"),
        ("a/2", "expected I/N"),
        ("1", "expected I/N"),
    ],
)
def test_parse_shard(text, error):
    if error is None:
        index, count = shards.parse_shard(text)
        assert 0 <= index < count
    else:
        with pytest.raises(shards.ShardError, match=error):
            shards.parse_shard(text)


def test_every_cell_is_in_exactly_one_shard_and_stays_there_when_the_matrix_changes(tiny_scenario):
    small = plan.load(tiny_scenario(seeds="[0, 1]"))
    big = plan.load(
        tiny_scenario(
            seeds="[5, 0, 3, 1, 2]",
            combos='["adamw+bf16_autocast", "adamw", "adamw+activation_checkpointing"]',
        )
    )
    assert {c.cell_id for c in small.cells} < {c.cell_id for c in big.cells}
    for count in (1, 2, 3, 7):
        shard_of_big = {c.cell_id: i for i in range(count) for c in shards.select(big, i, count).cells}
        assert sorted(shard_of_big) == sorted(c.cell_id for c in big.cells)  # every cell, once
        assert sum(len(shards.select(big, i, count).cells) for i in range(count)) == len(big.cells)
        for i in range(count):  # reordered, with more cells around it: a cell keeps its shard
            for cell in shards.select(small, i, count).cells:
                assert shard_of_big[cell.cell_id] == i


def test_shard_of_is_pinned():
    # a change of hash would move cells between the shards of runs already under way
    assert [shards.shard_of(f"cell-{i}", 4) for i in range(12)] == PINNED


def _part(directory, cell_id, **values):
    row = new_row(
        **{"cell_id": cell_id, "config_key": "k", "status": "reached", "final_val_loss": 1.0, **values}
    )
    curves = pd.DataFrame({"cell_id": [cell_id], "step": [0], "val_loss": [2.0]})
    store.write_part(directory, cell_id, row, curves, None)
    (directory / store.RUN_JSON).write_text(
        json.dumps({"schema_version": 1, "run_id": directory.name, "scenario": "s"})
    )
    return row


def test_merge_dedupes_identical_parts_and_is_idempotent(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    _part(a, "c1")
    _part(a, "c2")
    _part(b, "c3")
    (b / store.PARTS).mkdir(exist_ok=True)
    import shutil

    shutil.copytree(a / store.PARTS / "c2", b / store.PARTS / "c2")  # the same part in both
    out = tmp_path / "m"
    assert merge([a, b], out) == {"cells": 3, "added": 3, "duplicates": 1}
    cells = pd.read_parquet(out / store.CELLS)
    assert sorted(cells["cell_id"]) == ["c1", "c2", "c3"]
    assert len(pd.read_parquet(out / store.CURVES)) == 3
    meta = json.loads((out / store.RUN_JSON).read_text())
    assert [r["run_id"] for r in meta["merged_from"]] == ["a", "b"] and meta["scenario"] == "s"
    assert merge([a, b], out)["added"] == 0  # again: nothing new
    assert len(pd.read_parquet(out / store.CELLS)) == 3


def test_merge_refuses_a_conflicting_duplicate_and_writes_nothing(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    _part(a, "c1")
    _part(b, "c1", final_val_loss=1.5)  # the same cell run twice, another result
    out = tmp_path / "m"
    with pytest.raises(MergeError, match=r"cell c1: different results in .*a and .*b") as info:
        merge([a, b], out)
    assert "\n" not in str(info.value)
    assert not out.exists()
    done = cli("merge", str(a), str(b), "--out", str(out))
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "cell c1" in done.stderr
    assert not out.exists()


def test_merge_refuses_what_is_not_a_results_directory(tmp_path):
    (tmp_path / "junk").mkdir()
    done = cli("merge", str(tmp_path / "junk"), str(tmp_path / "missing"), "--out", str(tmp_path / "m"))
    assert done.returncode == 2 and "junk: not a benchbed results directory" in done.stderr


def deterministic_view(directory) -> pd.DataFrame:
    cells = pd.read_parquet(directory / store.CELLS)
    return cells.set_index("cell_id").sort_index()[DETERMINISTIC]


@pytest.mark.slow
def test_two_shards_merged_equal_one_unsharded_run(three_cell_reference, tmp_path):
    scenario_path, whole = three_cell_reference
    sizes = []
    for index in (0, 1):
        done = cli(
            "run",
            str(scenario_path),
            "--shard",
            f"{index}/2",
            "--out",
            str(tmp_path / f"s{index}"),
            "--quiet",
        )
        assert done.returncode == 0, done.stderr
        sizes.append(len(pd.read_parquet(tmp_path / f"s{index}" / store.CELLS)))
        assert json.loads((tmp_path / f"s{index}" / store.RUN_JSON).read_text())["shard"] == f"{index}/2"
    assert sorted(sizes) == [1, 2]  # the hash splits these three ids 1 + 2
    done = cli("merge", str(tmp_path / "s0"), str(tmp_path / "s1"), "--out", str(tmp_path / "merged"))
    assert done.returncode == 0, done.stderr
    merged = deterministic_view(tmp_path / "merged")
    reference = deterministic_view(whole)
    assert list(merged.index) == list(reference.index)
    pd.testing.assert_frame_equal(merged, reference)
    curves = pd.read_parquet(tmp_path / "merged" / store.CURVES)
    assert set(curves["cell_id"]) == set(reference.index)


def test_dry_run_of_a_shard_lists_only_its_cells(tiny_scenario, tmp_path, capsys):
    path = tiny_scenario()
    whole = plan.load(path)
    listed = []
    for index in (0, 1, 2):
        assert main(["run", path, "--shard", f"{index}/3", "--dry-run", "--out", str(tmp_path / "x")]) == 0
        out = capsys.readouterr().out
        assert f"(shard {index}/3)" in out
        listed += [line.split()[1] for line in out.splitlines() if line.strip().startswith("[todo]")]
    assert sorted(listed) == sorted(c.cell_id for c in whole.cells)
    assert main(["run", path, "--shard", "3/3", "--dry-run"]) == 2
    assert (
        capsys.readouterr().err.strip()
        == "benchbed: --shard: I must be in 0..2 (shards count from 0), got '3/3'"
    )


def test_an_empty_shard_writes_an_empty_store_that_merge_accepts(tiny_scenario, tmp_path, capsys):
    path = tiny_scenario()
    cells = plan.load(path).cells
    count = 16
    empty = next(i for i in range(count) if not any(shards.in_shard(c, i, count) for c in cells))
    out = tmp_path / "empty"
    assert main(["run", path, "--shard", f"{empty}/{count}", "--out", str(out), "--quiet"]) == 0
    assert "no cell hashes to this shard" in capsys.readouterr().err
    assert pd.read_parquet(out / store.CELLS).empty
    assert merge([out], tmp_path / "m")["cells"] == 0
