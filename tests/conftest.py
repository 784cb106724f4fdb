"""Shared fixtures: tiny scenarios that train real cells in seconds."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _cpu_threads():
    # cells and tests share 2 cores; one thread each keeps timings sane and runs deterministic
    torch.set_num_threads(1)
    os.environ.setdefault("BENCHBED_THREADS", "1")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def tiny_scenario(tmp_path):
    """A scenario of 2 combinations x 2 seeds whose cells train 12 steps of lm-tiny."""

    def make(
        extra: str = "", combos: str = '["adamw", "adamw+activation_checkpointing"]', seeds: str = "[0, 1]"
    ) -> str:
        path = tmp_path / "tiny.toml"
        path.write_text(
            textwrap.dedent(
                f"""
                name = "tiny"
                workload = "lm-tiny"
                device = "cpu"
                seeds = {seeds}
                target_loss = 3.2
                eval_every_tokens = 8064
                stop_at_target = false
                timeout_s = 240
                [budget]
                steps = 12
                [matrix]
                techniques = {combos}
                """
            )
            + textwrap.dedent(extra)
        )
        return str(path)

    return make


@pytest.fixture(scope="session")
def three_cell_reference(tmp_path_factory):
    """A 3-cell scenario (lm-tiny, 12 steps, seeds 0-2) and one local run of it: the reference that
    sharded, merged and Ray runs must reproduce (same cell ids, same deterministic metrics)."""
    root = tmp_path_factory.mktemp("reference")
    path = root / "three.toml"
    path.write_text(
        'name = "three"\nworkload = "lm-tiny"\ndevice = "cpu"\nseeds = [0, 1, 2]\ntarget_loss = 3.2\n'
        "eval_every_tokens = 8064\nstop_at_target = false\ntimeout_s = 240\n[budget]\nsteps = 12\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "benchbed.cli", "run", str(path), "--out", str(root / "whole"), "--quiet"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    return path, root / "whole"
