"""The end of a multi-process cell: every rank waits for the others, the process group is destroyed,
and the process exits without running interpreter teardown.

Plain torchrun cells on busy 2-core machines sometimes died at exit (``ChildFailedError`` after
the training had finished): a rank that leaves while a peer is still inside a collective, or a
communication library's background threads torn down during interpreter shutdown. So the worker
ends a distributed cell in this order: rank 0 writes its row, all ranks meet at a barrier, the
process group is destroyed, output is flushed, and the process leaves with ``os._exit`` (no atexit
handlers or static destructors left to crash). If any of that fails, the row already written
stands and the runner labels it (``teardown_error``).
"""

from __future__ import annotations

import contextlib
import os
import sys

import torch.distributed as dist


def is_distributed() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def teardown() -> str | None:
    """Barrier, then destroy the process group; returns what failed, None when all went well."""
    if not (dist.is_available() and dist.is_initialized()):
        return None
    try:
        dist.barrier()
        dist.destroy_process_group()
    except Exception as exc:  # the row is written; report and let the exit code say it
        return f"{type(exc).__name__}: {exc}"
    return None


def exit_now(code: int) -> None:
    """Flush and leave at once (no interpreter teardown)."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)
