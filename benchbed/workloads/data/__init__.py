"""Training data, generated or read from local files -- never downloaded.

Three sources share one small interface (`DataSource`, in ``base.py``):

* `MarkovCopySource` (``markov.py``): the seeded synthetic corpus with an exact loss floor.
* `TextFileSource` (``files.py``): local text files, byte-level (vocabulary 256).
* `TokenShardSource` (``files.py``): llm.c / modded-nanogpt ``.bin`` token shards.

A scenario's ``[data] kind`` names one of `KINDS`.
"""

from __future__ import annotations

from benchbed.workloads.data.base import DataError, DataSource
from benchbed.workloads.data.files import (
    SHARD_HEADER_INT32,
    SHARD_MAGIC,
    SHARD_VERSION,
    TextFileSource,
    TokenShardSource,
    check_shards,
    check_text,
    read_shard,
    shard_header,
    write_shard,
)
from benchbed.workloads.data.markov import MarkovCopySource

#: the kinds a scenario's [data] table may name; "synthetic" is the workload's own generator
KINDS = ("synthetic", "text", "shards")

__all__ = [
    "KINDS",
    "SHARD_HEADER_INT32",
    "SHARD_MAGIC",
    "SHARD_VERSION",
    "DataError",
    "DataSource",
    "MarkovCopySource",
    "TextFileSource",
    "TokenShardSource",
    "check_shards",
    "check_text",
    "read_shard",
    "shard_header",
    "write_shard",
]
