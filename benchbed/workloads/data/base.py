"""The interface every data source shares: train batches, validation batches, a fingerprint.

Data is generated or read from local files, never downloaded. Every source has a fixed
train/validation split and a fingerprint recorded with the results; where the data are synthetic
the source also knows its exact loss floor.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch


class DataError(ValueError):
    """Bad data input; the message names the file."""


class DataSource:
    vocab_size: int
    loss_floor: float | None = None  # nats per target token, where it is known exactly

    def train_batches(
        self, batch_size: int, seq_len: int, seed: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        raise NotImplementedError

    def val_batches(
        self, batch_size: int, seq_len: int, n_sequences: int
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        raise NotImplementedError

    def fingerprint(self) -> str:
        raise NotImplementedError

    def describe(self) -> str:
        return type(self).__name__
