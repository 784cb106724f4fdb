"""Streams a running cell's curves and telemetry to its live files (``results.live``) every few
seconds, so a cell the runner has to stop keeps what it measured until then.

A thread of its own wakes every ``every_s`` seconds and appends what is new: the evaluation rows
the train loop emitted and the telemetry samples taken since the last flush. The train loop never
waits for it; a write that fails is dropped and noted, never raised into training.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from benchbed.results import live
from benchbed.results.schema import CURVE_COLUMN_NAMES

FLUSH_EVERY_S = 2.0
CURVE_KEYS = [c for c in CURVE_COLUMN_NAMES if c != "cell_id"]


class LiveStream:
    """Collects a cell's evaluation rows (`on_event`) and appends them and its telemetry samples to
    the live files from a background thread."""

    def __init__(
        self, out_dir: str | Path | None, cell_id: str, telemetry: Any, every_s: float = FLUSH_EVERY_S
    ):
        self.cell_id = cell_id
        self.telemetry = telemetry
        self.every_s = every_s
        self.curves: list[dict[str, Any]] = []  # every evaluation so far (kept even without out_dir)
        self.errors: list[str] = []
        self._writer = live.LiveWriter(out_dir, cell_id) if out_dir is not None else None
        self._sent_curves = 0
        self._sent_samples = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def on_event(self, event: dict[str, Any]) -> None:
        """The train loop's `emit`: keeps evaluation rows."""
        if event.get("event") == "eval":
            with self._lock:
                self.curves.append({key: event.get(key) for key in CURVE_KEYS})

    def flush(self) -> None:
        if self._writer is None:
            return
        with self._lock:
            new_curves = self.curves[self._sent_curves :]
            self._sent_curves = len(self.curves)
        try:
            self._writer.append(live.CURVES, [{"cell_id": self.cell_id, **row} for row in new_curves])
            rows, self._sent_samples = self.telemetry.rows_since(self._sent_samples)
            self._writer.append(live.TELEMETRY, rows)
        except Exception as exc:  # never into training: the cell's own part is still written at the end
            self.errors.append(f"live stream: {type(exc).__name__}: {exc}")
            self._writer = None

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.flush()

    def start(self) -> None:
        if self._writer is not None:
            self._thread = threading.Thread(target=self._run, name=f"live-{self.cell_id}", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop the thread and flush what is left (the cell may still die writing its part)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None
        self.flush()
