"""Tracker exports against the real packages: what was written reads back with the same metrics
(MLflow's client on the file store, TensorBoard's EventAccumulator, the W&B offline run file), a
metric not measured is not logged as a number, and W&B offline makes no network connection."""

from __future__ import annotations

import glob
import math
import os
import shutil
import subprocess
import sys

import pandas as pd
import pytest
from fixtures.optional import require
from fixtures.results_fixture import build_results_dir

from benchbed.present.export import records
from benchbed.results import store

VARIANTS = (("adamw", 1.0, 1.0, True), ("adamw+bf16_autocast", 0.7, 0.65, True))


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Two cells with energy (and a CO2 estimate), one without: 3 cells, 11 evaluations each."""
    root = tmp_path_factory.mktemp("export")
    gpu = build_results_dir(root / "gpu", run_id="gpu", seeds=1, workloads=("tiny_lm",), variants=VARIANTS)
    cells = pd.read_parquet(gpu / store.CELLS)
    cells["co2_kg"] = cells["energy_j"] / 3.6e6 * 480 / 1000
    cells.to_parquet(gpu / store.CELLS, index=False)
    cpu = build_results_dir(
        root / "cpu", run_id="cpu", seeds=1, workloads=("tiny_lm",), variants=VARIANTS[:1], device="cpu",
        energy_available=False,
    )  # fmt: skip
    return [gpu, cpu]


def expected(results) -> dict[str, dict]:
    out = {}
    for directory in results:
        cells = store.load(directory).cells
        curves = store.load(directory).curves
        for row in cells.to_dict(orient="records"):
            out[row["cell_id"]] = {
                "row": row,
                "curves": curves[curves["cell_id"] == row["cell_id"]].sort_values("step"),
            }
    return out


def test_records_log_measured_metrics_only_and_label_co2_an_estimate(results):
    cells = {r.name: r for r in records(results)}
    assert len(cells) == 3
    gpu = next(r for r in cells.values() if r.key.startswith("gpu/"))
    assert "co2_kg_estimate" in gpu.metrics and "co2_kg" not in gpu.metrics
    cpu = next(r for r in cells.values() if r.key.startswith("cpu/"))
    assert "energy_j" not in cpu.metrics and "energy_j" in cpu.not_measured  # never a 0
    assert all(math.isfinite(v) for r in cells.values() for v in r.metrics.values())
    assert cpu.params["device"] == "cpu" and cpu.params["lr"] == "0.0003"


@pytest.mark.slow
def test_mlflow_runs_read_back_with_the_same_metrics(results, tmp_path):
    require("mlflow")
    from benchbed.present.export.cli import cli_main

    target = tmp_path / "mlruns"
    assert cli_main(["mlflow", *map(str, results), "--to", str(target)]) == 0
    assert cli_main(["mlflow", *map(str, results), "--to", str(target)]) == 0  # idempotent
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=target.resolve().as_uri())
    experiment = client.get_experiment_by_name("quick")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 3
    want = expected(results)
    for run in runs:
        cell = want[run.data.tags["benchbed.cell_id"]]
        row = cell["row"]
        assert run.info.run_name == row["cell_id"] and run.data.params["workload"] == row["workload"]
        assert run.data.metrics["final_val_loss"] == pytest.approx(row["final_val_loss"], rel=1e-12)
        assert run.data.metrics["time_to_target_s"] == pytest.approx(row["time_to_target_s"], rel=1e-12)
        if math.isnan(row["energy_j"]):
            assert "energy_j" not in run.data.metrics
            assert "energy_j" in run.data.tags["benchbed.not_measured"].split(",")
        else:
            assert run.data.metrics["energy_j"] == pytest.approx(row["energy_j"], rel=1e-12)
            assert run.data.metrics["co2_kg_estimate"] == pytest.approx(row["co2_kg"], rel=1e-12)
        history = client.get_metric_history(run.info.run_id, "curve/val_loss")
        got = sorted((m.step, m.value) for m in history)
        assert got == [
            (int(s), pytest.approx(v, rel=1e-12))
            for s, v in zip(cell["curves"]["step"], cell["curves"]["val_loss"], strict=True)
        ]


@pytest.mark.slow
def test_tensorboard_event_files_read_back_with_the_same_metrics(results, tmp_path):
    require("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from benchbed.present.export import tensorboard

    cells = records(results)
    written = tensorboard.export(cells, str(tmp_path / "tb"))
    assert len(written) == 3
    want = expected(results)
    cell_of = {tensorboard.run_dir_name(r): r.name for r in cells}
    for folder in written:
        cell = want[cell_of[folder.name]]
        acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
        acc.Reload()
        tags = acc.Tags()["scalars"]
        val = acc.Scalars("curve/val_loss")
        assert [e.step for e in val] == list(cell["curves"]["step"])
        assert [e.value for e in val] == pytest.approx(
            list(cell["curves"]["val_loss"]), rel=1e-6
        )  # float32 on disk
        assert acc.Scalars("summary/final_val_loss")[0].value == pytest.approx(
            cell["row"]["final_val_loss"], rel=1e-6
        )
        assert ("summary/energy_j" in tags) == (not math.isnan(cell["row"]["energy_j"]))
        assert acc.PluginTagToContent("hparams")  # the configuration, for the HParams dashboard
    again = tensorboard.export(records(results), str(tmp_path / "tb"))  # rewritten, not doubled
    acc = EventAccumulator(str(again[0]))
    acc.Reload()
    assert len(acc.Scalars("curve/val_loss")) == len(want[cell_of[again[0].name]]["curves"])


@pytest.mark.slow
def test_wandb_offline_runs_read_back_and_never_touch_the_network(results, tmp_path):
    require("wandb")
    from fixtures.wandb_reader import read_run

    target = tmp_path / "wb"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env["HOME"] = str(tmp_path / "home")  # no ~/.netrc, no saved login: offline needs none
    command = [
        sys.executable,
        "-m",
        "benchbed.cli",
        "export",
        "wandb",
        *map(str, results),
        "--to",
        str(target),
    ]
    strace = shutil.which("strace")
    trace = tmp_path / "connect.log"
    if strace:
        command = [strace, "-f", "-qq", "-e", "trace=connect", "-o", str(trace), *command]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    if strace:
        connects = [line for line in trace.read_text().splitlines() if "connect(" in line]
        network = [line for line in connects if "AF_INET" in line]
        assert network == [], network  # only the local socket to wandb's own service process
    files = sorted(glob.glob(str(target / "wandb" / "offline-run-*" / "run-*.wandb")))
    assert len(files) == 3
    want = expected(results)
    for path in files:
        run = read_run(path)
        cell = want[run["name"]]
        row = cell["row"]
        assert run["exit_code"] == 0 and run["config"]["workload"] == row["workload"]
        assert run["summary"]["final_val_loss"] == pytest.approx(row["final_val_loss"], rel=1e-12)
        if math.isnan(row["energy_j"]):
            assert "energy_j" not in run["summary"] and "energy_j" in run["summary"]["benchbed.not_measured"]
        else:
            assert run["summary"]["co2_kg_estimate"] == pytest.approx(row["co2_kg"], rel=1e-12)
        logged = [(h["_step"], h["curve/val_loss"]) for h in run["history"] if "curve/val_loss" in h]
        assert logged == [
            (int(s), pytest.approx(v, rel=1e-12))
            for s, v in zip(cell["curves"]["step"], cell["curves"]["val_loss"], strict=True)
        ]


def test_export_of_a_missing_directory_is_one_line_and_exit_2(tmp_path, capsys):
    from benchbed.present.export.cli import cli_main

    assert cli_main(["tensorboard", str(tmp_path / "nope")]) in (2,)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope" in err
