"""Peak FLOP/s table and MFU: NaN where the peak is unknown, never a made-up number."""

from __future__ import annotations

import math

import pytest
import torch

from benchbed.measure import flops


def test_cpu_has_no_peak_so_mfu_is_nan():
    cpu = torch.device("cpu")
    assert math.isnan(flops.peak_flops(cpu))
    assert math.isnan(flops.mfu(6.0e6, 1.0e4, cpu))


@pytest.mark.parametrize(
    ("name", "peak"),
    [("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA A100-SXM4-40GB", 312e12), ("NVIDIA GeForce GTX 1080", None)],
)
def test_gpu_peak_by_device_name(monkeypatch, name, peak):
    monkeypatch.setattr(flops.torch.cuda, "get_device_name", lambda device: name)
    gpu = torch.device("cuda", 0)
    if peak is None:
        assert math.isnan(flops.peak_flops(gpu)) and math.isnan(flops.mfu(1.0, 1.0, gpu))
    else:
        assert flops.peak_flops(gpu) == peak
        assert flops.mfu(6.0e6, 1.0e4, gpu) == 6.0e6 * 1.0e4 / peak
