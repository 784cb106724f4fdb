"""scripts/gpu_check.sh under the GPU image's constraints, on the CPU.

The image has python3, torch, Triton, pandas, pyarrow, nvidia-ml-py, pytest and pytest-benchmark,
and no plotly, streamlit, rich or scipy, and no network. The rehearsal: a throwaway venv that sees
this environment's packages (as the image's system site-packages would be seen), a meta-path
blocker making the missing packages unimportable in every process the script starts (and logging
every attempt), then the script with GPU_CHECK_DEVICE=cpu: its offline --no-deps install, every
step, the scenario with the hardware techniques (references on the CPU), and its output rules --
at most 8 files in $OUT, no subfolders, no Triton cache there. (Its 8-minute budget is the GPU
machine's; on a CPU the script runs with 3x the step limits.)"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MISSING_ON_THE_IMAGE = ("plotly", "streamlit", "rich", "scipy", "playwright")

BLOCKER = textwrap.dedent(
    """
    import os, sys

    BLOCKED = {blocked!r}
    LOG = os.environ.get("BLOCKED_IMPORTS_LOG")

    class _Blocker:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                if LOG:
                    with open(LOG, "a") as f:
                        f.write(f"{{name}} <- {{sys.argv[:3]}}\\n")
                raise ImportError(f"{{name}} is not installed on the GPU image (blocked by the test)")
            return None

    sys.meta_path.insert(0, _Blocker())
    """
).format(blocked=MISSING_ON_THE_IMAGE)


def test_blocker_makes_the_dashboard_packages_unimportable(tmp_path):
    (tmp_path / "sitecustomize.py").write_text(BLOCKER)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    probe = "import importlib, sys\nfor m in sys.argv[1:]:\n    try:\n        importlib.import_module(m)\n    except ImportError:\n        print('blocked', m)"
    out = subprocess.run(
        [sys.executable, "-c", probe, "plotly", "streamlit", "rich", "pandas"],
        env=env, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert out.split("\n")[:3] == ["blocked plotly", "blocked streamlit", "blocked rich"]
    assert "blocked pandas" not in out


def test_gpu_check_script_declares_the_image_constraints():
    text = (REPO / "scripts" / "gpu_check.sh").read_text()
    assert 'PYTHON="${PYTHON:-python3}"' in text
    assert "--no-deps --no-build-isolation" in text
    assert 'TRITON_CACHE_DIR="$WORK/triton-cache"' in text and 'WORK="${WORK:-/tmp/' in text
    assert "benchbed.cli run" not in text.replace("`benchbed run`", "")  # the CLI prints with rich
    subprocess.run(["bash", "-n", str(REPO / "scripts" / "gpu_check.sh")], check=True)


@pytest.mark.slow
def test_gpu_check_rehearsal_on_cpu_under_image_constraints(tmp_path):
    """The whole script, CPU mode, in a throwaway venv with the dashboard packages blocked."""
    venv = tmp_path / "venv"
    # no pip of its own: pip and setuptools come from the shared packages, like the image's system ones
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    venv_site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    # the image's packages are its system site-packages; here, this environment's
    here = [p for p in site.getsitepackages() if "site-packages" in p]
    Path(venv_site, "_image_packages.pth").write_text("".join(f"{p}\n" for p in here))
    blocker_dir = tmp_path / "blocker"
    blocker_dir.mkdir()
    (blocker_dir / "sitecustomize.py").write_text(BLOCKER)
    out, work = tmp_path / "out", tmp_path / "work"
    log = tmp_path / "blocked.log"
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "TRITON_INTERPRET")},
        "PYTHON": str(python),
        "OUT": str(out),
        "WORK": str(work),
        "GPU_CHECK_DEVICE": "cpu",
        "PYTHONPATH": str(blocker_dir),
        "BLOCKED_IMPORTS_LOG": str(log),
        "PIP_NO_INDEX": "1",  # no network on the image
    }
    started = time.monotonic()
    done = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh")], env=env, capture_output=True,
                          text=True, timeout=3 * 480)  # fmt: skip
    elapsed = time.monotonic() - started
    summary = (out / "summary.txt").read_text() if (out / "summary.txt").exists() else ""
    assert done.returncode == 0, f"{summary}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    # the 8-minute budget is the GPU machine's; the rehearsal runs with 3x the step limits on 2 cores
    assert elapsed < 3 * 480, f"took {elapsed:.0f} s"
    for name in ("install", "tests", "bench", "aot", "scenario"):
        assert f"gpu_check: {name} rc=0" in summary, summary
    files = [p for p in out.rglob("*")]
    assert all(p.is_file() and p.parent == out for p in files), files  # no subfolders
    assert len(files) <= 8, files
    assert {p.name for p in files} >= {"summary.txt", "kernels.parquet", "aot.json", "scenario.tar.gz",
                                       "logs.tar.gz", "tests-gpu.xml"}  # fmt: skip
    assert not any("triton" in p.name for p in files)
    attempted = log.read_text() if log.exists() else ""
    assert attempted == "", f"code on the script's paths tried to import: {attempted}"
    import pandas as pd

    frame = pd.read_parquet(out / "kernels.parquet")
    assert {"block_sparse_attention", "fp8_linear", "int8_linear"} <= set(frame.op)
    shutil.unpack_archive(out / "scenario.tar.gz", tmp_path / "unpacked")
    cells = pd.read_parquet(tmp_path / "unpacked" / "scenario" / "cells.parquet")
    assert len(cells) == 4 and not cells.status.isin(["error", "timeout", "oom"]).any(), cells
    assert any("block_sparse_attention" in t for t in cells.techniques)
