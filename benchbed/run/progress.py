"""The runner's progress bar: cells done/total, current cell, ETA, latest loss. Quiet when not a TTY."""

from __future__ import annotations

import sys


class Progress:
    """A rich progress bar: cells done/total, current cell, ETA, latest loss. Quiet when not a TTY."""

    def __init__(self, total: int, enabled: bool):
        self.enabled = enabled
        self.total = total
        if not enabled:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as RichProgress

        self.bar = RichProgress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[detail]}"),
            transient=False,
        )
        self.task = self.bar.add_task("cells", total=total, detail="")
        self.bar.start()

    def cell(self, cell_id: str) -> None:
        if self.enabled:
            self.bar.update(self.task, detail=cell_id)

    def event(self, cell_id: str, event: dict) -> None:
        if self.enabled and event.get("event") == "eval":
            self.bar.update(
                self.task,
                detail=f"{cell_id}  step {event['step']}  val {event['val_loss']:.4f}  {100 * event.get('progress', 0):.0f}%",
            )

    def advance(self) -> None:
        if self.enabled:
            self.bar.advance(self.task)

    def log(self, message: str) -> None:
        if self.enabled:
            self.bar.console.print(message)
        else:
            print(message, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.enabled:
            self.bar.stop()
