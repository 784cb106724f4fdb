"""Telemetry on a real NVIDIA GPU through the real NVML library (skipped without CUDA)."""

from __future__ import annotations

import math
import time

import pytest
import torch

from benchbed.measure.machine import describe_environment, machine_info
from benchbed.measure.telemetry import Telemetry

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_real_nvml_measures_a_matmul_window():
    device = torch.device("cuda", 0)
    tel = Telemetry(device, "gpu-test", power_hz=20.0)
    tel.start()
    a = torch.randn(4096, 4096, device=device)
    torch.cuda.synchronize(device)
    tel.window_start()
    end_s = time.perf_counter() + 2.0
    while time.perf_counter() < end_s:
        a = torch.tanh(a @ a)
    torch.cuda.synchronize(device)
    tel.window_end()
    summary = tel.stop()
    assert summary["energy_source"] in ("nvml_counter", "nvml_power_integral")
    assert summary["energy_j"] > 0 and summary["mean_power_w"] > 0
    assert summary["peak_mem_bytes"] >= 4096 * 4096 * 4
    assert summary["mem_source"] == "cuda_max_allocated"
    frame = tel.samples()
    assert len(frame) >= 10 and (frame["gpu0_power_w"].dropna() > 0).all()
    assert frame["gpu0_mem_used_bytes"].notna().any()
    if summary["energy_source"] == "nvml_counter":
        assert not math.isnan(summary["energy_disagreement"])


def test_environment_and_machine_info_see_the_gpu():
    rows = {row["quantity"]: row for row in describe_environment()}
    assert rows["gpu_power"]["available"] is True
    assert rows["cuda_peak_memory"]["available"] is True
    info = machine_info()
    assert info["nvml_available"] is True and info["gpus"][0]["name"]
    assert info["driver_version"]
