"""A profiler trace of a cell, recorded OUTSIDE its timed run: ``parts/<cell_id>/profile/``.

After the cell has trained and its part (row, curves, telemetry) is written, the same process
builds the same cell afresh (same seed, same techniques, same settings: a separate short run) and
runs ``warmup`` steps, then ``steps`` steps under ``torch.profiler`` (CPU, and CUDA on a GPU,
with shapes and memory). Nothing of this reaches the cell's row: the clock, the energy windows and
the memory peaks were read before. It writes, into the part's ``profile/`` folder (renamed into
place, so it is whole or absent):

- ``trace.json``: the Chrome trace (open it in Perfetto or chrome://tracing);
- ``summary.txt``: the profiler's operator table, by self time;
- ``memory_snapshot.pickle`` (CUDA, with ``memory = true``): ``torch.cuda.memory._dump_snapshot``
  of the allocations recorded by ``_record_memory_history`` over the build and the steps (open it
  at pytorch.org/memory_viz);
- ``profile.json``: what was recorded (steps, warmup, device, torch version), or why not.

A profile that would run past the cell's timeout is skipped (``profile.json`` says so): the
runner would otherwise kill the process and record a good cell as a timeout. A profile that fails
leaves its error in ``profile.json`` and never changes the cell's result.

``python -m benchbed.worker.profile SPEC.json OUT_DIR`` (``benchbed profile``) does the same for a
cell whose part is already in OUT_DIR, without training it again.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

from benchbed.plan import Cell
from benchbed.results import store
from benchbed.results.schema import now_iso
from benchbed.worker.assemble import build_context, default_device
from benchbed.worker.cell import cell_run_settings
from benchbed.worker.context import compose_step
from benchbed.worker.loop import seed_everything, sync
from benchbed.workloads import WORKLOADS, Batch

PROFILE_DIR = "profile"
TRACE = "trace.json"
SUMMARY = "summary.txt"
SNAPSHOT = "memory_snapshot.pickle"
META = "profile.json"
#: profiler overhead over a plain step, for the timeout estimate (generous: tracing is not free)
OVERHEAD = 5.0


def estimated_seconds(row: dict, settings: dict) -> float:
    """How long the profile will take, from the cell's own timings (build + steps, with overhead)."""
    steps = float(row.get("steps") or 0)
    train = float(row.get("train_time_s") or 0)
    per_step = train / steps if steps > 0 and train == train else 1.0
    warm = float(row.get("warmup_time_s") or 0)
    warm = warm if warm == warm else 0.0
    return 5.0 + warm + OVERHEAD * per_step * (settings["warmup"] + settings["steps"])


def record(spec: dict, settings: dict, folder: Path) -> dict:
    """The short profiled run of the cell ``spec`` describes; files into ``folder``; returns what
    was recorded (profile.json's content)."""
    cell = Cell.from_spec(spec)
    device = default_device(cell.device)
    seed_everything(cell.seed, device)
    workload = WORKLOADS[cell.workload].with_data(cell.data, cell.base_dir)
    techniques = [cell.technique(n) for n in cell.techniques]
    run = cell_run_settings(cell, workload, device)
    snapshot = bool(settings.get("memory")) and device.type == "cuda"
    if snapshot:
        torch.cuda.memory._record_memory_history(max_entries=100_000)
    try:
        view = {**cell.view(), "device": device.type, "launched": True}
        ctx = build_context(workload, techniques, run, view)
        data = workload.make_data()
        batches = data.train_batches(run.batch_size, run.seq_len, run.seed + 1_000_003 * run.rank)
        step_fn = compose_step(ctx)
        ctx.model.train()

        def one_step() -> None:
            inputs, targets = next(batches)
            batch = Batch(inputs, targets).to(device)
            for t in ctx.techniques:
                batch = t.select_batch(batch, ctx)
            factor = ctx.lr_factor()
            for group in ctx.optimizer.param_groups:
                group["lr"] = group["initial_lr"] * factor
            step_fn(batch, ctx.step)
            for t in ctx.techniques:
                t.after_step(ctx)
            ctx.step += 1
            ctx.tokens += batch.n_tokens * run.world_size

        for _ in range(settings["warmup"]):
            one_step()
        sync(device)
        activities = [torch.profiler.ProfilerActivity.CPU]
        if device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        t0 = time.perf_counter()
        with torch.profiler.profile(activities=activities, record_shapes=True, profile_memory=True) as prof:
            for i in range(settings["steps"]):
                with torch.profiler.record_function(f"benchbed.step.{i}"):
                    one_step()
                sync(device)
        seconds = time.perf_counter() - t0
        prof.export_chrome_trace(str(folder / TRACE))
        sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        (folder / SUMMARY).write_text(prof.key_averages().table(sort_by=sort, row_limit=40) + "\n")
        if snapshot:
            torch.cuda.memory._dump_snapshot(str(folder / SNAPSHOT))
    finally:
        if snapshot:
            torch.cuda.memory._record_memory_history(enabled=None)
    return {
        "cell_id": cell.cell_id,
        "steps": settings["steps"],
        "warmup": settings["warmup"],
        "device": str(device),
        "torch_version": torch.__version__,
        "profiled_seconds": seconds,
        "recorded_at": now_iso(),
        "files": sorted(p.name for p in folder.iterdir()) + [META],
        "note": "a separate short run of the cell after its timed run; not part of its numbers",
    }


def add_profile(
    out_dir: Path, spec: dict, settings: dict, row: dict | None = None, started: float | None = None
) -> dict:
    """Record the profile and put ``profile/`` into the cell's part (whole or absent); returns
    profile.json's content. Skipped when the cell's timeout would be hit (``started``: when the
    cell's process began, ``time.perf_counter()``)."""
    part = Path(out_dir) / store.PARTS / spec["cell_id"]
    leader = int(os.environ.get("RANK", "0")) == 0
    tmp = Path(tempfile.mkdtemp(dir=part, prefix=f".{PROFILE_DIR}.", suffix=".tmp")) if leader else None
    scratch = tmp or Path(tempfile.mkdtemp(prefix="benchbed-profile-"))
    try:
        meta: dict
        elapsed = time.perf_counter() - started if started is not None else 0.0
        needed = estimated_seconds(row or {}, settings)
        if started is not None and elapsed + needed > float(spec.get("timeout_s", float("inf"))):
            meta = {
                "skipped": f"the profile (about {needed:.0f} s) would run past the cell's timeout "
                f"({spec.get('timeout_s')} s, {elapsed:.0f} s used); run `benchbed profile` on it"
            }
        else:
            try:
                meta = record(spec, settings, scratch)
            except Exception as exc:  # the profile never costs the cell its result
                traceback.print_exc()
                meta = {"error": "".join(traceback.format_exception_only(type(exc), exc)).strip()[-2000:]}
        if not leader:
            return meta
        (tmp / META).write_text(json.dumps(meta, indent=2, default=str))
        final = part / PROFILE_DIR
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
        return meta
    finally:
        if tmp is not None and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        if tmp is None:
            shutil.rmtree(scratch, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """``python -m benchbed.worker.profile SPEC.json OUT_DIR``: profile a cell already run."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m benchbed.worker.profile SPEC.json OUT_DIR", file=sys.stderr)
        return 2
    spec = json.loads(Path(argv[0]).read_text())
    threads = os.environ.get("BENCHBED_THREADS")
    if threads:
        torch.set_num_threads(int(threads))
    out_dir = Path(argv[1])
    if not (out_dir / store.PARTS / spec["cell_id"] / "row.json").is_file():
        print(
            f"benchbed profile: {spec['cell_id']}: no results in {out_dir} yet; run the cell first",
            file=sys.stderr,
        )
        return 2
    meta = add_profile(out_dir, spec, spec["profile"])
    if "error" in meta:
        print(f"benchbed profile: {spec['cell_id']}: {meta['error']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
