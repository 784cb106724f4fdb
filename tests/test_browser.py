"""The dashboard served by a real Streamlit server and opened in headless Chromium (slow)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from fixtures.results_fixture import build_kernels_parquet, build_results_dir

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = pytest.mark.slow


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_health(url: str, server: subprocess.Popen, log_path: Path, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"benchbed dashboard exited with {server.returncode}: {log_path.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200 and response.read().strip() == b"ok":
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer ok within {timeout_s:.0f} s")


@pytest.fixture
def dashboard_url(tmp_path):
    run_a = build_results_dir(tmp_path / "run-a", run_id="run-a", seeds=3)
    build_kernels_parquet(run_a)
    empty = tmp_path / "empty"
    empty.mkdir()
    port = free_loopback_port()
    log_path = tmp_path / "dashboard.log"
    log = log_path.open("w")
    # `benchbed dashboard` sets BENCHBED_RESULTS and runs `streamlit run` on the installed app; it is
    # started in its own session so the streamlit child is stopped with it.
    server = subprocess.Popen(
        [sys.executable, "-m", "benchbed.cli", "dashboard", str(run_a), str(empty), "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        wait_for_health(f"http://127.0.0.1:{port}/_stcore/health", server, log_path)
        yield f"http://127.0.0.1:{port}/"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)")
def test_leaderboard_renders_in_chromium(dashboard_url, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright-python is not installed")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(dashboard_url, wait_until="domcontentloaded")
            page.wait_for_selector('[data-testid="stDataFrame"]', timeout=60_000)
            page.wait_for_timeout(1500)  # let the grid and the chart paint before the screenshot
            text = page.inner_text("body")
            page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
        finally:
            browser.close()
    assert "Leaderboard" in text and "Rank by" in text
    assert "empty results directory" in text  # the bad directory's error is visible next to the table
    assert "1 run(s)" in text
    assert (tmp_path / "dashboard.png").stat().st_size > 10_000
