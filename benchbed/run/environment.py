"""The run's environment, for run.json: host, platform, versions, devices, the commit, and the
hardware state `measure.machine` reads (NVML, RAPL)."""

from __future__ import annotations

import os
import platform
import socket
import subprocess

from benchbed.measure.machine import machine_info


def git_sha() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=os.path.dirname(__file__),
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], capture_output=True, text=True, timeout=5, cwd=os.path.dirname(__file__)
        )
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def git_branch() -> str | None:
    """The branch the run is of, for `benchbed history --branch` and `gate --baseline-history`:
    BENCHBED_BRANCH, else what a CI says (a pull request's source branch, or the pushed ref), else
    git's current branch; None on a detached checkout nothing names."""
    for name in ("BENCHBED_BRANCH", "GITHUB_HEAD_REF", "GITHUB_REF_NAME", "CI_COMMIT_REF_NAME"):
        if os.environ.get(name):
            return os.environ[name]
    branch = _git("rev-parse", "--abbrev-ref", "HEAD")
    return None if branch in (None, "HEAD") else branch


def environment() -> dict:
    import torch

    env = {
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "cuda_available": torch.cuda.is_available(),
        "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "git_sha": git_sha(),
        "git_branch": git_branch(),
        "git_commit_time": _git("show", "-s", "--format=%cI", "HEAD"),
    }
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    try:
        env["machine"] = machine_info()
    except Exception as exc:  # telemetry must never stop a run
        env["machine"] = {"error": f"{type(exc).__name__}: {exc}"}
    return env
