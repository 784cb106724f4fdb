"""Synthetic labelled images, made locally and deterministically from a seed: shapes and textures.

Ten classes. Five are a shape on a flat background (disc, ring, square, triangle, plus), at a
random centre, size and rotation; five are a texture filling the image (horizontal, vertical and
diagonal stripes, a checkerboard, a lattice of dots), at a random frequency, phase and a small
random tilt. Foreground and background colours are random per image (with a contrast floor), and
Gaussian pixel noise is added. The label is a function of the noise-free image, so the Bayes error
is near zero, but not exactly zero (a small shape under noise can be ambiguous) and it is not
computed: ``loss_floor`` is None.

Everything is drawn from one ``torch.Generator``, with CPU tensor ops only, so a seed fixes every
pixel (a test checks it). Images come out normalised to roughly zero mean and unit variance,
[B, 3, S, S] float32, with int64 labels [B].
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import torch

from benchbed.workloads.data.base import DataSource

CLASSES = (
    "disc",
    "ring",
    "square",
    "triangle",
    "plus",
    "horizontal stripes",
    "vertical stripes",
    "diagonal stripes",
    "checkerboard",
    "dots",
)


def _uniform(n: int, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, 1, 1, generator=g)


def render(labels: torch.Tensor, size: int, noise_std: float, g: torch.Generator) -> torch.Tensor:
    """Images [n, 3, size, size] for the given labels, every random choice drawn from `g`."""
    n = labels.numel()
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    y, x = coords.view(1, -1, 1), coords.view(1, 1, -1)  # [1, S, 1], [1, 1, S]
    # shapes: centre, radius, rotation
    cx, cy = _uniform(n, 0.35, 0.65, g), _uniform(n, 0.35, 0.65, g)
    r = _uniform(n, 0.22, 0.36, g)
    theta = _uniform(n, 0.0, 2 * math.pi, g)
    u = (x - cx) * torch.cos(theta) + (y - cy) * torch.sin(theta)
    v = -(x - cx) * torch.sin(theta) + (y - cy) * torch.cos(theta)
    d = torch.sqrt(u * u + v * v)
    # textures: frequency (cycles per image), phase, a tilt of at most 0.15 rad
    freq = _uniform(n, 2.5, 5.0, g)
    phase = _uniform(n, 0.0, 2 * math.pi, g)
    tilt = _uniform(n, -0.15, 0.15, g)

    def along(angle: float) -> torch.Tensor:  # the coordinate across stripes at `angle` (+ tilt)
        a = angle + tilt
        return x * torch.cos(a) + y * torch.sin(a)

    wave_u = torch.sin(2 * math.pi * freq * along(0.0) + phase)
    wave_v = torch.sin(2 * math.pi * freq * along(math.pi / 2) + phase)
    triangle = torch.ones_like(d, dtype=torch.bool)
    for k in range(3):
        a = 2 * math.pi * k / 3
        triangle &= u * math.cos(a) + v * math.sin(a) < r / 2
    masks = torch.stack(
        [
            d < r,
            (d < r) & (d > 0.55 * r),
            torch.maximum(u.abs(), v.abs()) < 0.8 * r,
            triangle,
            ((u.abs() < r / 3) & (v.abs() < r)) | ((v.abs() < r / 3) & (u.abs() < r)),
            torch.sin(2 * math.pi * freq * along(math.pi / 2) + phase) > 0,
            wave_u > 0,
            torch.sin(2 * math.pi * freq * along(math.pi / 4) + phase) > 0,
            wave_u * wave_v > 0,
            wave_u * wave_v > 0.5,
        ],
        dim=1,
    )  # [n, 10, S, S]
    mask = masks[torch.arange(n), labels].unsqueeze(1).float()  # [n, 1, S, S]
    background = torch.rand(n, 3, 1, 1, generator=g)
    shift = 0.35 + 0.3 * torch.rand(n, 3, 1, 1, generator=g)  # contrast floor 0.35 per channel
    foreground = torch.remainder(background + shift, 1.0)
    images = background + mask * (foreground - background)
    images = images + noise_std * torch.randn(n, 3, size, size, generator=g)
    return (images - 0.5) / 0.3


@dataclass
class ShapesSource(DataSource):
    """Labelled synthetic images, generated per batch; validation is a fixed set."""

    image_size: int = 32
    noise_std: float = 0.1
    val_seed: int = 777_767
    n_classes: int = len(CLASSES)
    vocab_size: int = 0  # not a token source
    loss_floor = None  # near zero, not computed (see the module docstring)

    def sample(self, n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.randint(self.n_classes, (n,), generator=g)
        return render(labels, self.image_size, self.noise_std, g), labels

    def train_batches(self, batch_size, seq_len, seed):
        g = torch.Generator().manual_seed(int(seed) * 1_000_003 + 41)
        while True:
            yield self.sample(batch_size, g)

    def val_batches(self, batch_size, seq_len, n_sequences):
        images, labels = self.sample(n_sequences, torch.Generator().manual_seed(self.val_seed))
        return list(zip(images.split(batch_size), labels.split(batch_size), strict=True))

    def fingerprint(self) -> str:
        """The settings and a hash of the first validation images (a changed generator shows)."""
        h = hashlib.sha256(f"shapes:{self.image_size}:{self.noise_std}:{self.n_classes}".encode())
        images, labels = self.sample(8, torch.Generator().manual_seed(self.val_seed))
        h.update(images.numpy().tobytes())
        h.update(labels.numpy().tobytes())
        return h.hexdigest()[:16]

    def describe(self) -> str:
        return (
            f"synthetic shapes and textures ({self.n_classes} classes, {self.image_size}x{self.image_size}, "
            f"noise {self.noise_std})"
        )
