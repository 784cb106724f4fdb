"""One runner per results directory: an exclusive `flock` on ``<results>/.lock``, held for the run.

Two runners on one directory would train every cell twice and time each under the other's load.
The lock is an advisory ``fcntl.flock`` on an open file: the kernel drops it when the holder's
process ends, however it ends (SIGKILL included), so a crashed runner never leaves a stale lock. The
holder writes its PID and host into the file for the message a second runner prints; the file
itself stays (removing it would race with a runner opening it).

The descriptor is opened close-on-exec, so a cell started with exec never inherits it. A process
*forked* from the runner without exec would share the lock (flock belongs to the open file
description): fork any helper before taking the lock, or close ``RunLock.fd`` in the child.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from pathlib import Path

LOCK_FILE = ".lock"


class Locked(RuntimeError):
    """Another runner holds the directory; str() is the one line to print."""


class RunLock:
    """``with RunLock(out_dir):`` -- raises `Locked` naming the holder when another runner has it."""

    def __init__(self, out_dir: str | os.PathLike):
        self.path = Path(out_dir) / LOCK_FILE
        self.fd: int | None = None

    def acquire(self) -> RunLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise Locked(
                f"{self.path.parent}: another benchbed run is writing here ({holder}); "
                "wait for it to finish or give this one another --out"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, 0)
            os.close(self.fd)  # closing the last descriptor drops the lock
            self.fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 200, 0).decode(errors="replace").strip()
    except OSError:
        text = ""
    text = "".join(c for c in text if c.isprintable())
    return text.replace("pid", "PID", 1) if text else "PID not yet written"
