"""Peak FLOP/s of a device and model FLOPs utilisation (MFU).

MFU = achieved model FLOP/s (``flops_per_token * tokens_per_s``) over the device's dense bf16
tensor-core peak. Devices not in the table, and every CPU, have no peak here: their MFU is NaN,
never 0.
"""

from __future__ import annotations

import math

import torch

PEAK_FLOPS_BF16 = {  # dense tensor-core peaks, for MFU; unknown devices give NaN
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "L4": 121e12,
    "A10": 125e12,
}


def peak_flops(device: torch.device) -> float:
    if device.type != "cuda":
        return math.nan
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_FLOPS_BF16.items():
        if key in name:
            return value
    return math.nan


def mfu(flops_per_token: float, tokens_per_s: float, device: torch.device) -> float:
    """Model FLOPs utilisation of ``device``; NaN where its peak is unknown (every CPU)."""
    return flops_per_token * tokens_per_s / peak_flops(device)
