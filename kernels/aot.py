"""Ahead-of-time compilation of every kernel configuration for named GPUs, without a GPU.

``triton.compile(ASTSource(fn, signature, constexprs), target=GPUTarget("cuda", arch, 32))`` runs
Triton's whole pipeline (TTIR -> TTGIR -> LLVM IR -> PTX) and the ``ptxas`` bundled with Triton to a
cubin, so a kernel that only works in the interpreter fails here. Resource usage comes from the
bundled ``cuobjdump -res-usage`` (registers, stack, local/spill bytes) and the compiled metadata
(dynamic shared memory); ``wgmma`` in the PTX says whether a matrix kernel uses Hopper's warpgroup
MMA.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import subprocess
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

from benchbed.kernels._triton import AotConfig, compilable

#: arch -> the most dynamic shared memory one block may use (bytes), from the CUDA programming guide
SHARED_LIMIT_BYTES = {90: 232448, 80: 166912}
ARCH_NAMES = {90: "sm_90 (H100/H200)", 80: "sm_80 (A100)"}


@dataclass(frozen=True)
class CompileResult:
    op: str
    kernel: str
    config: str
    hints: str
    arch: int
    num_warps: int
    num_stages: int
    registers: int | None  # per thread; None when cuobjdump could not be read
    shared_bytes: int
    stack_bytes: int | None
    local_bytes: int | None  # spill space
    wgmma: bool
    ptx_bytes: int
    cubin_bytes: int

    @property
    def fits_shared(self) -> bool:
        return self.shared_bytes <= SHARED_LIMIT_BYTES.get(self.arch, SHARED_LIMIT_BYTES[80])

    @property
    def spills(self) -> bool:
        """Stack or local (spill) bytes, or resource usage that could not be read (counted as a spill:
        an unread report must not pass for a clean one)."""
        if self.stack_bytes is None or self.local_bytes is None:
            return True
        return self.stack_bytes > 0 or self.local_bytes > 0


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def cuobjdump_path() -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


def resource_usage(cubin: bytes) -> dict[str, int]:
    """REG / STACK / SHARED / LOCAL of the (single) function in a cubin, via cuobjdump -res-usage."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run(
            [cuobjdump_path(), "-res-usage", f.name], capture_output=True, text=True, check=True
        )
    found = dict(re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", out.stdout))
    return {k: int(v) for k, v in found.items()}


def compile_config(config: AotConfig, arch: int) -> CompileResult:
    if _interpreting():
        raise RuntimeError(
            "ahead-of-time compiles need TRITON_INTERPRET unset (it makes Triton's library interpreted)"
        )
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    source = ASTSource(compilable(config.kernel), config.signature, config.constexprs, config.attrs())
    compiled = triton.compile(
        source,
        target=GPUTarget("cuda", arch, 32),
        options={"num_warps": config.num_warps, "num_stages": config.num_stages},
    )
    ptx, cubin = compiled.asm["ptx"], compiled.asm["cubin"]
    try:
        usage = resource_usage(cubin)
    except (OSError, subprocess.CalledProcessError):
        usage = {}
    return CompileResult(
        op=config.op,
        kernel=config.kernel_name,
        config=config.label,
        hints=config.hints,
        arch=arch,
        num_warps=config.num_warps,
        num_stages=config.num_stages,
        registers=usage.get("REG"),
        shared_bytes=int(compiled.metadata.shared),
        stack_bytes=usage.get("STACK"),
        local_bytes=usage.get("LOCAL"),
        wgmma="wgmma" in ptx,
        ptx_bytes=len(ptx),
        cubin_bytes=len(cubin),
    )


def _compile_indexed(task: tuple[int, int]) -> CompileResult:
    from benchbed.kernels import aot_configs

    index, arch = task
    return compile_config(aot_configs(arch)[index], arch)


def compile_all(
    archs: tuple[int, ...] = (90, 80), jobs: int = 1, indices: list[int] | None = None
) -> list[CompileResult]:
    """Compile the registry's configurations (all, or those at ``indices``) for every arch, in
    ``jobs`` processes (each compile is single-threaded; spawn, not fork, because torch is loaded)."""
    from benchbed.kernels import aot_configs

    per_arch = {arch: aot_configs(arch) for arch in archs}
    chosen = list(range(len(aot_configs()))) if indices is None else list(indices)
    # the same index is the same kernel on every arch; a configuration limited to some archs
    # (fp8 dots need sm_89+) is compiled only for those
    tasks = [
        (i, arch)
        for arch in archs
        for i in chosen
        if per_arch[arch][i].archs is None or arch in per_arch[arch][i].archs
    ]
    if jobs <= 1:
        return [compile_config(per_arch[arch][i], arch) for i, arch in tasks]
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(_compile_indexed, tasks))
