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
