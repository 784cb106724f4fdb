"""Local files, never downloaded: byte-level text (vocabulary 256) and token shards in the llm.c /
modded-nanogpt ``.bin`` format (a 256-int32 header: magic 20240520, version 1, token count; then
uint16 tokens). Both are one token array split once into train and validation.
"""

from __future__ import annotations

import glob
import hashlib
import math
import os

import numpy as np
import torch

from benchbed.workloads.data.base import DataError, DataSource

SHARD_MAGIC = 20240520
SHARD_VERSION = 1
SHARD_HEADER_INT32 = 256


class _TokenArraySource(DataSource):
    """A 1-D token array split once: the last `val_fraction` is validation."""

    val_fraction = 0.1

    def __init__(self, train: np.ndarray, val: np.ndarray, vocab_size: int, fingerprint: str, label: str):
        self.train, self.val = train, val
        self.vocab_size = vocab_size
        self._fingerprint, self._label = fingerprint, label

    def _need(self, tokens: np.ndarray, seq_len: int, what: str) -> None:
        if len(tokens) < seq_len + 2:
            raise DataError(
                f"{self._label}: {what} split has {len(tokens)} tokens, fewer than one sequence of {seq_len + 1}"
            )

    def train_batches(self, batch_size, seq_len, seed):
        self._need(self.train, seq_len, "train")
        g = torch.Generator().manual_seed(int(seed) * 1_000_003 + 17)
        data = self.train
        span = torch.arange(seq_len + 1)
        while True:
            starts = torch.randint(len(data) - seq_len - 1, (batch_size,), generator=g)
            idx = (starts[:, None] + span).numpy()
            seqs = torch.from_numpy(data[idx].astype(np.int64))
            yield seqs[:, :-1].contiguous(), seqs[:, 1:].contiguous()

    def val_batches(self, batch_size, seq_len, n_sequences):
        self._need(self.val, seq_len, "validation")
        n = min(n_sequences, (len(self.val) - 1) // seq_len)
        seqs = [self.val[i * seq_len : i * seq_len + seq_len + 1].astype(np.int64) for i in range(n)]
        t = torch.from_numpy(np.stack(seqs))
        return [(b[:, :-1].contiguous(), b[:, 1:].contiguous()) for b in t.split(batch_size)]

    def fingerprint(self) -> str:
        return self._fingerprint

    def describe(self) -> str:
        return f"{self._label} ({len(self.train)} train / {len(self.val)} validation tokens)"


def _split(tokens: np.ndarray, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    n_val = max(1, int(math.ceil(len(tokens) * val_fraction)))
    return tokens[:-n_val], tokens[-n_val:]


def _files(pattern: str, what: str) -> list[str]:
    paths = sorted(glob.glob(pattern)) if any(c in pattern for c in "*?[") else [pattern]
    paths = [p for p in paths if os.path.isfile(p)]
    if not paths:
        raise DataError(f"{pattern}: no {what} file found")
    return paths


class TextFileSource(_TokenArraySource):
    """Local text files read as bytes (vocabulary 256): no tokenizer to download."""

    def __init__(self, pattern: str, val_fraction: float = 0.1):
        paths = _files(pattern, "text")
        h = hashlib.sha256()
        chunks = []
        for p in paths:
            with open(p, "rb") as f:
                raw = f.read()
            h.update(raw)
            chunks.append(np.frombuffer(raw, dtype=np.uint8))
        tokens = np.concatenate(chunks)
        train, val = _split(tokens, val_fraction)
        super().__init__(train, val, 256, h.hexdigest()[:16], f"text {pattern}")


def read_shard(path: str) -> np.ndarray:
    """Tokens of one llm.c `.bin` shard, validated against its header."""
    with open(path, "rb") as f:
        header = np.frombuffer(f.read(SHARD_HEADER_INT32 * 4), dtype=np.int32)
        if len(header) < SHARD_HEADER_INT32:
            raise DataError(f"{path}: header: file shorter than the 1024-byte header")
        if header[0] != SHARD_MAGIC:
            raise DataError(f"{path}: header: magic is {header[0]}, expected {SHARD_MAGIC}")
        if header[1] != SHARD_VERSION:
            raise DataError(f"{path}: header: version is {header[1]}, expected {SHARD_VERSION}")
        count = int(header[2])
        tokens = np.frombuffer(f.read(), dtype=np.uint16)
    if len(tokens) != count:
        raise DataError(f"{path}: header: token count says {count}, file holds {len(tokens)}")
    return tokens


def write_shard(path: str, tokens: np.ndarray) -> None:
    """Write tokens as an llm.c `.bin` shard (used by tests and by users preparing data)."""
    tokens = np.asarray(tokens)
    if tokens.size and (tokens.min() < 0 or tokens.max() >= 2**16):
        raise DataError(f"{path}: tokens must fit in uint16")
    header = np.zeros(SHARD_HEADER_INT32, dtype=np.int32)
    header[:3] = (SHARD_MAGIC, SHARD_VERSION, len(tokens))
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(tokens.astype(np.uint16).tobytes())


class TokenShardSource(_TokenArraySource):
    """llm.c / modded-nanogpt shards. Files whose name contains 'val' are the validation split;
    without any, the last 10% of the tokens are."""

    def __init__(self, pattern: str, vocab_size: int, val_fraction: float = 0.1):
        paths = _files(pattern, ".bin shard")
        val_paths = [p for p in paths if "val" in os.path.basename(p)]
        train_paths = [p for p in paths if p not in val_paths]
        h = hashlib.sha256()
        parts = {}
        for p in paths:
            parts[p] = read_shard(p)
            h.update(parts[p].tobytes())
        if val_paths and train_paths:
            train = np.concatenate([parts[p] for p in train_paths])
            val = np.concatenate([parts[p] for p in val_paths])
        else:
            train, val = _split(np.concatenate([parts[p] for p in paths]), val_fraction)
        top = int(max(train.max(initial=0), val.max(initial=0)))
        if top >= vocab_size:
            raise DataError(f"{pattern}: token id {top} is outside the model's vocabulary of {vocab_size}")
        super().__init__(train, val, vocab_size, h.hexdigest()[:16], f"shards {pattern}")
