"""Local files, never downloaded: byte-level text (vocabulary 256) and token shards in the llm.c /
modded-nanogpt ``.bin`` format (a 256-int32 header: magic 20240520, version 1, token count; then
uint16 tokens). Both are one token array split once into train and validation.

`check_text` and `check_shards` validate a source without building it (regular files only; each
shard's header, length and token count; every token id inside the vocabulary, read in chunks;
at least one sequence in each split), so a scenario is refused before its first cell starts.
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
    """The regular files `pattern` names (a path or a glob); DataError saying why there are none."""
    if any(c in pattern for c in "*?["):
        matches = sorted(glob.glob(pattern))
        paths = [p for p in matches if os.path.isfile(p)]
        if not paths:
            found = f"matches only {len(matches)} non-file(s)" if matches else "matches no file"
            raise DataError(f"{pattern}: {found}; no {what} file to read")
        return paths
    if not os.path.exists(pattern):
        raise DataError(f"{pattern}: no such {what} file")
    if os.path.isdir(pattern):
        raise DataError(
            f"{pattern}: is a directory, not a {what} file (a glob like '{pattern}/*' reads its files)"
        )
    if not os.path.isfile(pattern):
        raise DataError(f"{pattern}: not a regular file (a device or pipe cannot be {what} data)")
    return [pattern]


def _check_splits(label: str, n_train: int, n_val: int, seq_len: int) -> None:
    for what, n in (("train", n_train), ("validation", n_val)):
        if n < seq_len + 2:
            raise DataError(
                f"{label}: {what} split has {n} tokens, fewer than the {seq_len + 2} one sequence "
                f"needs (the data needs at least {_min_total(seq_len)} tokens in all)"
            )


def _min_total(seq_len: int, val_fraction: float = 0.1) -> int:
    return int(math.ceil((seq_len + 2) / val_fraction))


def _split_sizes(n: int, val_fraction: float) -> tuple[int, int]:
    n_val = max(1, int(math.ceil(n * val_fraction))) if n else 0
    return n - n_val, n_val


def check_text(pattern: str, seq_len: int, val_fraction: float = 0.1) -> None:
    """Refuse text data that cannot give a sequence in both splits (sizes only: bytes are tokens)."""
    paths = _files(pattern, "text")
    total = sum(os.path.getsize(p) for p in paths)
    if total == 0:
        raise DataError(f"{pattern}: empty (0 bytes in {len(paths)} file(s))")
    _check_splits(f"text {pattern}", *_split_sizes(total, val_fraction), seq_len)


def shard_header(path: str) -> int:
    """The token count of a `.bin` shard, its header and length checked; DataError naming the file."""
    size = os.path.getsize(path)
    header_bytes = SHARD_HEADER_INT32 * 4
    if size < header_bytes:
        raise DataError(f"{path}: header: file is {size} bytes, shorter than the {header_bytes}-byte header")
    with open(path, "rb") as f:
        header = np.frombuffer(f.read(header_bytes), dtype=np.int32)
    if header[0] != SHARD_MAGIC:
        raise DataError(
            f"{path}: header: magic is {header[0]}, expected {SHARD_MAGIC} (not an llm.c .bin shard)"
        )
    if header[1] != SHARD_VERSION:
        raise DataError(f"{path}: header: version is {header[1]}, expected {SHARD_VERSION}")
    body = size - header_bytes
    if body % 2:
        raise DataError(
            f"{path}: length: {body} bytes after the header is not a whole number of uint16 tokens"
        )
    count = int(header[2])
    if count != body // 2:
        raise DataError(f"{path}: header: token count says {count}, file holds {body // 2}")
    return count


def _max_token(path: str, count: int, chunk: int = 1 << 24) -> int:
    tokens = np.memmap(path, dtype=np.uint16, mode="r", offset=SHARD_HEADER_INT32 * 4, shape=(count,))
    top = 0
    for start in range(0, count, chunk):
        top = max(top, int(tokens[start : start + chunk].max()))
    return top


def check_shards(pattern: str, vocab_size: int, seq_len: int, val_fraction: float = 0.1) -> None:
    """Refuse shards with a bad header or length, token ids outside the vocabulary, or too few tokens."""
    paths = _files(pattern, ".bin shard")
    counts = {p: shard_header(p) for p in paths}
    for p, count in counts.items():
        if count and (top := _max_token(p, count)) >= vocab_size:
            raise DataError(f"{p}: token id {top} is outside the model's vocabulary of {vocab_size}")
    val_paths = [p for p in paths if "val" in os.path.basename(p)]
    train_paths = [p for p in paths if p not in val_paths]
    if val_paths and train_paths:
        n_train, n_val = sum(counts[p] for p in train_paths), sum(counts[p] for p in val_paths)
    else:
        n_train, n_val = _split_sizes(sum(counts.values()), val_fraction)
    _check_splits(f"shards {pattern}", n_train, n_val, seq_len)


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
    count = shard_header(path)
    with open(path, "rb") as f:
        f.seek(SHARD_HEADER_INT32 * 4)
        return np.frombuffer(f.read(count * 2), dtype=np.uint16)


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
