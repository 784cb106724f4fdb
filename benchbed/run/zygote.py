"""A fork server for cells: one process imports torch and the worker once, and forks a fresh child
per cell, so a cell no longer pays for starting Python and importing torch (about 3.5 s a cell).

The runner starts the server (``python -m benchbed.run.zygote``) when a run begins; it imports the
worker and what a cell imports on its first steps (``torch._dynamo``, which ``torch.optim`` pulls in,
pandas and pyarrow), then waits on a Unix socket. For each cell the runner sends the worker's
arguments and environment with its stdout pipe and stderr file; the server forks a child that
becomes exactly what ``python -m benchbed.worker SPEC OUT`` would be:

* one process per cell, in a session of its own (the runner's timeout kills its process group);
* dying with the server, which dies with the runner (``PR_SET_PDEATHSIG`` at both links), so no
  cell outlives a killed runner;
* a clean CUDA state: the server never touches CUDA (its availability check goes through NVML), and
  before each fork it checks that neither torch nor the CUDA driver (``libcuda``) was initialised
  in it; if either was, it refuses and the runner falls back to a plain subprocess.

The runner also falls back to a plain subprocess (``launchers.run_cell_subprocess``) where a fork
is not the same cell: not Linux, a multi-process (torchrun) cell, an environment that differs from
the server's (``cell_env``: A/B source trees, test hooks; torch read its environment when the
server imported it), or a server that did not start. The row's ``launcher`` column says which.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

#: imported once by the server: the worker, and what a cell imports on its first steps
PRELOAD = ("torch", "torch._dynamo", "pandas", "pyarrow.parquet", "benchbed.worker.__main__")
#: variables the runner sets per cell; any other difference from the server's environment means
#: the child would not be the cell a fresh process would be
PER_CELL_ENV = ("BENCHBED_LAUNCHER", "PYTHONUNBUFFERED")
READY_TIMEOUT_S = 180.0
MESSAGE_BYTES = 1 << 20
CELL_PROCESS_NAME = b"benchbed-cell"


class ForkServerError(RuntimeError):
    """The fork server cannot launch this cell; the runner uses a plain subprocess instead."""


def _prctl(option: int, value: int | bytes) -> None:
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(option, value, 0, 0, 0)


def die_with_parent() -> None:
    """Be killed (SIGKILL) when the parent dies, even by SIGKILL (Linux)."""
    PR_SET_PDEATHSIG = 1
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def fork_unsafe_reason(cuda_initialized: bool, maps_text: str) -> str | None:
    """Why forking this process would not give a clean cell, or None. A CUDA context does not
    survive fork, and once the CUDA driver is loaded (``libcuda``, e.g. by a plain
    ``torch.cuda.is_available()``) a forked child cannot initialise CUDA."""
    if cuda_initialized:
        return "CUDA is initialised in the fork server"
    if "libcuda.so" in maps_text:
        return "the CUDA driver is loaded in the fork server"
    return None


def _own_maps() -> str:
    try:
        return Path("/proc/self/maps").read_text()
    except OSError:
        return ""


# -- the server (runs in its own process) --------------------------------------------------------


def _send(sock: socket.socket, message: dict[str, Any]) -> None:
    sock.sendall(json.dumps(message).encode())


def _child(
    request: dict[str, Any], fds: list[int], sock: socket.socket, server_pid: int, ready_w: int
) -> None:
    """In the forked child: become `python -m benchbed.worker ARGS`; never returns."""
    code = 1
    try:
        sock.close()
        os.setsid()  # its own process group: the runner's timeout kills the group
        die_with_parent()
        if os.getppid() != server_pid:  # the server died before the line above
            os._exit(137)
        _prctl(15, CELL_PROCESS_NAME)  # PR_SET_NAME: `ps` and `pgrep benchbed-cell` show cells
        os.write(ready_w, b"1")
        os.close(ready_w)
        stdout_fd, stderr_fd = fds
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(stdout_fd, 1)
        os.dup2(stderr_fd, 2)
        for fd in (devnull, stdout_fd, stderr_fd):
            os.close(fd)
        signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a new interpreter
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.environ.clear()
        os.environ.update(request["env"])
        os.chdir(request["cwd"])
        sys.argv = ["benchbed.worker", *request["args"]]
        import random

        import numpy as np
        import torch

        random.seed()  # a fresh process's Python and NumPy generators differ from cell to cell
        np.random.seed(int.from_bytes(os.urandom(4), "little"))
        torch.manual_seed(torch.initial_seed())  # torch's generator as a fresh process has it
        from benchbed.worker.__main__ import main

        code = main(request["args"])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)


def serve(sock: socket.socket) -> int:
    """The server's loop: preload, say ready, then spawn and reap cells as the runner asks."""
    import importlib

    try:
        for name in PRELOAD:
            importlib.import_module(name)
    except BaseException as exc:  # the runner falls back to subprocesses
        _send(sock, {"ready": False, "error": f"{type(exc).__name__}: {exc}"})
        return 1
    _send(sock, {"ready": True, "pid": os.getpid()})
    import torch

    server_pid = os.getpid()
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(sock, MESSAGE_BYTES, 4)
        except OSError:
            return 0
        if not message:  # the runner closed the socket: the run is over
            return 0
        request = json.loads(message)
        if request["op"] == "spawn":
            reason = fork_unsafe_reason(torch.cuda.is_initialized(), _own_maps())
            if reason or len(fds) != 2:
                for fd in fds:
                    os.close(fd)
                _send(sock, {"error": reason or "expected the cell's stdout and stderr"})
                continue
            ready_r, ready_w = os.pipe()
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
            pid = os.fork()
            if pid == 0:
                os.close(ready_r)
                _child(request, fds, sock, server_pid, ready_w)
            os.close(ready_w)
            for fd in fds:
                os.close(fd)
            os.read(ready_r, 1)  # the child has its own process group now (or is gone)
            os.close(ready_r)
            _send(sock, {"pid": pid})
        elif request["op"] == "wait":  # the cell is this server's child: only it can reap it
            _, status, usage = os.wait4(request["pid"], 0)
            maxrss = float(usage.ru_maxrss) * (1 if sys.platform == "darwin" else 1024)
            _send(sock, {"returncode": os.waitstatus_to_exitcode(status), "peak_rss_bytes": maxrss})


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    sock = socket.socket(fileno=int(argv[0]))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the runner's to handle
    return serve(sock)


# -- the runner's side ---------------------------------------------------------------------------


class ForkedCell:
    """A cell forked by the server, with the parts of `subprocess.Popen` the launcher uses."""

    def __init__(self, server: ForkServer, pid: int, stdout):
        self._server = server
        self.pid = pid
        self.stdout = stdout
        self.returncode: int | None = None
        #: the cell's peak resident set (wait4's ru_maxrss, as the launcher measures a subprocess);
        #: NaN until reaped, and where the server was lost before it could say
        self.peak_rss_bytes = math.nan

    def wait(self) -> int:
        if self.returncode is None:
            self.returncode, self.peak_rss_bytes = self._server._wait(self.pid)
            with contextlib.suppress(OSError):
                self.stdout.close()
        return self.returncode


class ForkServer:
    """The runner's handle on the fork server: started once per run, closed at its end."""

    def __init__(self) -> None:
        self._sock: socket.socket | None = None
        self._proc: subprocess.Popen | None = None
        self._env: dict[str, str] = {}
        self._ready: bool | None = None
        self._lock = threading.Lock()
        self.reason = ""  # why it cannot be used, once it cannot
        self.fallbacks: dict[str, int] = {}  # why cells ran as plain subprocesses -> how many

    def start(self) -> None:
        """Start the server process (its imports run while the runner prepares the run)."""
        if not sys.platform.startswith("linux") or not hasattr(socket, "send_fds"):
            self.reason = "fork server: Linux only"
            self._ready = False
            return
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._env = dict(os.environ)
        env = {**self._env, "PYTHONUNBUFFERED": "1", "PYTORCH_NVML_BASED_CUDA_CHECK": "1"}
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "benchbed.run.zygote", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,  # its errors come back as the reason it cannot be used
                env=env,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        except OSError as exc:
            self.reason = f"fork server did not start: {exc}"
            self._ready = False
            return
        finally:
            theirs.close()
        self._sock = ours

    def _receive(self, timeout: float | None = None) -> dict[str, Any]:
        assert self._sock is not None
        self._sock.settimeout(timeout)
        try:
            data = self._sock.recv(MESSAGE_BYTES)
        except (OSError, TimeoutError) as exc:
            raise ForkServerError(f"fork server: {type(exc).__name__}: {exc}") from None
        if not data:
            raise ForkServerError("fork server: exited")
        return json.loads(data)

    def _wait_ready(self) -> bool:
        if self._ready is None:
            try:
                reply = self._receive(READY_TIMEOUT_S)
                self._ready = bool(reply.get("ready"))
                if not self._ready:
                    self.reason = f"fork server could not import the worker: {reply.get('error')}"
            except ForkServerError as exc:
                self._ready, self.reason = False, str(exc)
            if not self._ready:
                self.close()
        return bool(self._ready)

    def unusable_for(self, spec: dict, env: dict[str, str]) -> str | None:
        """Why this cell needs a plain subprocess, or None. Waits for the server to be ready first
        either way, so its imports never run beside a cell being measured."""
        if self._sock is not None and not self._wait_ready():
            return self.reason
        if spec.get("world_size", 1) > 1:
            return "a multi-process cell (torchrun)"
        changed = sorted(
            k for k in set(env) | set(self._env) if k not in PER_CELL_ENV and env.get(k) != self._env.get(k)
        )
        if changed:
            return f"its environment differs from the fork server's ({', '.join(changed[:3])})"
        if self._sock is None:
            return self.reason or "fork server not started"
        return None

    def spawn(self, args: list[str], env: dict[str, str], stderr_fd: int) -> ForkedCell:
        """Fork a cell running ``benchbed.worker ARGS``; raises ForkServerError if it cannot."""
        read_fd, write_fd = os.pipe()
        try:
            with self._lock:
                if self._sock is None:
                    raise ForkServerError(self.reason or "fork server closed")
                request = {"op": "spawn", "args": args, "env": env, "cwd": os.getcwd()}
                socket.send_fds(self._sock, [json.dumps(request).encode()], [write_fd, stderr_fd])
                reply = self._receive()
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        if "pid" not in reply:
            os.close(read_fd)
            self.reason = f"fork server refused: {reply.get('error')}"
            self.close()
            raise ForkServerError(self.reason)
        return ForkedCell(self, int(reply["pid"]), os.fdopen(read_fd, "r"))

    def _wait(self, pid: int) -> tuple[int, float]:
        """(exit code, peak resident set in bytes) of a forked cell, once it has ended."""
        with self._lock:
            if self._sock is None:
                return -signal.SIGKILL, math.nan  # the server is gone, and its cells with it
            try:
                self._sock.sendall(json.dumps({"op": "wait", "pid": pid}).encode())
                reply = self._receive()
                peak = reply.get("peak_rss_bytes")
                return int(reply["returncode"]), float(peak) if peak is not None else math.nan
            except (OSError, ForkServerError) as exc:
                self.reason = f"fork server lost: {exc}"
                self.close()
                return -signal.SIGKILL, math.nan

    def close(self) -> None:
        """End the server. Its cells have ended (the runner waits for each), so a server still
        importing, or slow to leave, is killed."""
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None
        if self._proc is not None:
            try:
                self._proc.wait(timeout=2 if self._ready else 0)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None


def fork_cell(
    server: ForkServer | None, spec: dict, args: list[str], env: dict[str, str], stderr_file
) -> ForkedCell | None:
    """The cell forked by `server`, or None where it needs a plain subprocess (the reason stays on
    the server: `fallbacks`)."""
    if server is None:
        return None
    why = server.unusable_for(spec, env)
    if why is None:
        try:
            return server.spawn(args, {**env, "BENCHBED_LAUNCHER": "fork"}, stderr_file.fileno())
        except ForkServerError as exc:
            why = str(exc)
    server.fallbacks.setdefault(why, 0)
    server.fallbacks[why] += 1
    return None


if __name__ == "__main__":
    sys.exit(main())
