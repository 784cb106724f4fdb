"""Curves and telemetry streamed while a cell runs (results.live, worker.stream): what a cell the
runner has to stop has measured is kept, labelled partial."""

from __future__ import annotations

import time

import pandas as pd

from benchbed.measure.telemetry import Telemetry
from benchbed.results import live, store
from benchbed.results.schema import CURVE_COLUMN_NAMES, failure_row, new_row
from benchbed.worker.stream import LiveStream


class Samples:
    """The one call LiveStream makes on a Telemetry, over a list the test grows."""

    def __init__(self):
        self.rows = []

    def rows_since(self, start):
        return [dict(r) for r in self.rows[start:]], len(self.rows)


def eval_event(step: int) -> dict:
    return {
        "event": "eval",
        "step": step,
        "tokens": step * 10,
        "train_time_s": step * 0.1,
        "energy_j": float("nan"),
        "train_loss": 3.0 - step * 0.01,
        "val_loss": 3.1 - step * 0.01,
        "progress": step / 100,
    }


def test_stream_appends_only_what_is_new_and_reads_back_as_the_part_would(tmp_path):
    samples = Samples()
    stream = LiveStream(tmp_path, "cell-a", samples, every_s=3600)  # flushed by hand here
    stream.on_event(eval_event(0))
    stream.on_event({"event": "done"})  # not an evaluation
    samples.rows += [{"t_s": 0.0, "sample_lag_s": 0.0, "in_window": False, "rss_bytes": 1e8}]
    stream.flush()
    stream.on_event(eval_event(4))
    samples.rows += [{"t_s": 0.1, "sample_lag_s": 0.001, "in_window": True}]
    stream.flush()
    stream.flush()  # nothing new: nothing appended twice
    with open(live.live_dir(tmp_path, "cell-a") / live.TELEMETRY, "a") as f:
        f.write('{"t_s": 0.2, "in_wi')  # a line cut short by a kill
    curves, telemetry = live.read(tmp_path, "cell-a")
    assert list(curves.columns) == CURVE_COLUMN_NAMES and curves["step"].tolist() == [0, 4]
    assert (curves["cell_id"] == "cell-a").all()
    assert telemetry["t_s"].tolist() == [0.0, 0.1] and telemetry["in_window"].tolist() == [False, True]
    assert telemetry["rss_bytes"].isna().tolist() == [False, True]
    assert telemetry["cell_id"].iloc[0] == "cell-a" and telemetry["rss_bytes"].dtype == "float64"
    assert len(stream.curves) == 2  # kept in memory too (the worker's error path writes them)


def test_stream_flushes_on_its_own_while_the_cell_runs(tmp_path):
    samples = Samples()
    stream = LiveStream(tmp_path, "cell-b", samples, every_s=0.05)
    stream.start()
    try:
        stream.on_event(eval_event(0))
        deadline = time.monotonic() + 5
        path = live.live_dir(tmp_path, "cell-b") / live.CURVES
        while time.monotonic() < deadline and not (path.is_file() and path.read_text()):
            time.sleep(0.02)
        assert path.read_text().count("\n") == 1  # written without stop() or flush()
    finally:
        stream.stop()


def test_without_a_results_directory_nothing_is_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    stream = LiveStream(None, "cell-c", Samples())
    stream.start()
    stream.on_event(eval_event(0))
    stream.stop()
    assert stream.curves and not list(tmp_path.iterdir())


def test_a_failed_part_takes_the_stream_and_is_labelled_partial(tmp_path):
    writer = live.LiveWriter(tmp_path, "cell-d")
    writer.append(
        live.CURVES,
        [{"cell_id": "cell-d", **{k: v for k, v in eval_event(8).items() if k in CURVE_COLUMN_NAMES}}],
    )
    writer.append(live.TELEMETRY, [{"t_s": 0.0, "sample_lag_s": 0.0, "in_window": True, "rss_bytes": 2e8}])
    store.write_failed_part(tmp_path, "cell-d", failure_row({"cell_id": "cell-d"}, "timeout", "timed out"))
    store.write_failed_part(tmp_path, "cell-e", failure_row({"cell_id": "cell-e"}, "error", "exit code 1"))
    store.write_part(
        tmp_path, "cell-f", new_row(cell_id="cell-f", status="reached", partial=False), None, None
    )
    cells = store.consolidate(tmp_path).set_index("cell_id")
    assert cells["partial"].to_dict() == {"cell-d": True, "cell-e": True, "cell-f": False}
    assert pd.read_parquet(tmp_path / store.CURVES)["cell_id"].tolist() == ["cell-d"]
    assert pd.read_parquet(tmp_path / store.TELEMETRY)["rss_bytes"].tolist() == [2e8]
    assert not (tmp_path / "parts" / live.LIVE).exists()


def test_a_rerun_starts_its_stream_clean(tmp_path):
    live.LiveWriter(tmp_path, "cell-g").append(live.CURVES, [{"step": 1}])
    live.LiveWriter(tmp_path, "cell-g")  # the cell again (--retry-failed)
    assert live.read(tmp_path, "cell-g") == (None, None)


def test_telemetry_rows_since_gives_each_sample_once():
    telemetry = Telemetry(threaded=False, rapl_root="/nonexistent")
    telemetry.start()
    telemetry.sample_once()
    rows, n = telemetry.rows_since(0)
    assert n == len(rows) == 2  # start() takes the first sample
    telemetry.sample_once()
    rows, n = telemetry.rows_since(n)
    assert n == 3 and len(rows) == 1 and rows[0]["t_s"] >= 0
    telemetry.stop()
