"""``benchbed merge DIR... --out DIR``: consolidate results directories (shards, Ray runs, reruns on
other machines) into one store.

Parts are copied verbatim (row, curves, telemetry, profiler files), so a merged directory reads
exactly like one run of all the cells and merging is idempotent. Deduplication is by cell id: the
same part found twice (a directory merged again, a shard copied twice) is kept once; the same cell
id with *different* results (a cell that ran twice) is a conflict, refused before anything is
written, because which of the two is "the" result is a choice benchbed will not make silently.
Rows keep the ``run_id`` they were run under; run.json lists the runs merged (``merged_from``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path

from benchbed import SCHEMA_VERSION
from benchbed.results import store
from benchbed.results.schema import now_iso


class MergeError(ValueError):
    """Inputs that cannot be merged; the message is one line naming the directory or cell."""


def _canonical(row: dict) -> str:
    return json.dumps(row, sort_keys=True, default=str)


def _check_input(directory: Path) -> dict:
    if not directory.is_dir():
        raise MergeError(f"{directory}: not a results directory (it does not exist)")
    has_parts = (directory / store.PARTS).is_dir()
    if not has_parts and not (directory / store.RUN_JSON).is_file():
        raise MergeError(f"{directory}: not a benchbed results directory (no parts/, no run.json)")
    try:
        meta = store.read_run_json(directory)
    except store.StoreError as exc:
        raise MergeError(str(exc)) from None
    version = meta.get("schema_version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        raise MergeError(
            f"{directory / store.RUN_JSON}: schema_version {version} is not {SCHEMA_VERSION}, which this benchbed reads"
        )
    return meta


def plan_merge(dirs: list[Path], out: Path) -> tuple[dict[str, Path], int, list[dict]]:
    """(cell id -> the part directory to copy, identical duplicates skipped, run.json of each input).

    The parts already in ``out`` count as an input, so merging into an existing store adds to it."""
    sources: dict[str, tuple[Path, str]] = {}
    duplicates = 0
    metas = []
    inputs = [out, *dirs] if (out / store.PARTS).is_dir() else list(dirs)
    seen_dirs: set[Path] = set()
    for directory in inputs:
        resolved = directory.resolve()
        if resolved in seen_dirs:
            continue
        seen_dirs.add(resolved)
        meta = _check_input(directory)
        if directory is not out:
            metas.append({"dir": str(directory), **meta})
        for cell_id, row in store.read_parts(directory).items():
            blob = _canonical(row)
            if cell_id in sources:
                first, first_blob = sources[cell_id]
                if first_blob != blob:
                    raise MergeError(
                        f"cell {cell_id}: different results in {first.parent.parent} and {directory} "
                        f"(the cell ran twice); keep one: delete {store.PARTS}/{cell_id} from the other"
                    )
                duplicates += 1
                continue
            sources[cell_id] = (directory / store.PARTS / cell_id, blob)
    return {cid: path for cid, (path, _) in sources.items()}, duplicates, metas


def _merged_meta(out: Path, metas: list[dict]) -> dict:
    existing = store.read_run_json(out)
    runs = existing.get("merged_from", [])
    known = {(r.get("run_id"), r.get("dir")) for r in runs}
    for meta in metas:
        env = meta.get("env", {})
        entry = {
            "dir": meta["dir"],
            "run_id": meta.get("run_id"),
            "scenario": meta.get("scenario"),
            "shard": meta.get("shard"),
            "backend": meta.get("backend", "local"),
            "host": env.get("host"),
            "git_sha": env.get("git_sha"),
            "started_at": meta.get("started_at"),
            "finished_at": meta.get("finished_at"),
        }
        if (entry["run_id"], entry["dir"]) not in known:
            runs.append(entry)
            known.add((entry["run_id"], entry["dir"]))
    scenarios = {r["scenario"] for r in runs if r.get("scenario")}
    texts = {m.get("scenario_text") for m in metas if m.get("scenario_text")}
    first = metas[0] if metas else {}
    started = [r["started_at"] for r in runs if r.get("started_at")]
    finished = [r["finished_at"] for r in runs if r.get("finished_at")]
    meta = {
        **existing,
        "schema_version": SCHEMA_VERSION,
        "run_id": existing.get("run_id") or uuid.uuid4().hex[:12],
        "scenario": scenarios.pop() if len(scenarios) == 1 else existing.get("scenario"),
        "started_at": min(started) if started else existing.get("started_at"),
        "finished_at": max(finished) if finished else existing.get("finished_at"),
        "merged_at": now_iso(),
        "merged_from": runs,
    }
    if len(texts) == 1:
        meta["scenario_text"] = texts.pop()
        meta["scenario_path"] = first.get("scenario_path")
    if "env" not in meta and first.get("env"):
        meta["env"] = first["env"]  # the first input's; each run's own host is in merged_from
    return meta


def merge(dirs: list[str | os.PathLike], out: str | os.PathLike) -> dict:
    """Merge ``dirs`` into ``out``; {"cells", "added", "duplicates"}. Raises MergeError before
    writing anything when an input is unreadable or two inputs disagree on a cell."""
    out = Path(out)
    inputs = [Path(d) for d in dirs]
    if not inputs:
        raise MergeError("give at least one results directory to merge")
    if out.exists() and not out.is_dir():
        raise MergeError(f"{out}: --out: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        _check_input(out)  # merging into an existing store: it must be one
    sources, duplicates, metas = plan_merge(inputs, out)
    parts = out / store.PARTS
    parts.mkdir(parents=True, exist_ok=True)
    added = 0
    for cell_id, source in sources.items():
        target = parts / cell_id
        if target.exists() and target.resolve() == source.resolve():
            continue
        if target.exists():  # equal to the source (checked above): nothing to do
            continue
        tmp = Path(tempfile.mkdtemp(dir=parts, prefix=f".{cell_id}.", suffix=".tmp"))
        try:
            shutil.copytree(source, tmp, dirs_exist_ok=True)
            os.rename(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        added += 1
    store.atomic_write_json(out / store.RUN_JSON, _merged_meta(out, metas))
    store.consolidate(out)
    return {"cells": len(sources), "added": added, "duplicates": duplicates}
