"""Ahead-of-time GPU compilation without a GPU: every Triton kernel configuration must compile to PTX
and a cubin (Triton's bundled ptxas) for sm_90 (H100/H200) and sm_80 (A100), fit the shared memory
of each and spill nothing, under both sets of divisibility hints the runtime compiles with (aligned
pointers only; pointers and every size/stride a multiple of 16). A kernel that only works in the
interpreter fails here, and so does a shape the runtime accepts but no configuration covers."""

from __future__ import annotations

import os

import pytest
import torch

from benchbed import kernels
from benchbed.kernels import aot, flash_attention, norms
from benchbed.kernels.cli import cli_main

pytestmark = [
    pytest.mark.skipif(not kernels.HAS_TRITON, reason="needs triton"),
    # TRITON_INTERPRET=1 at import makes Triton's own library interpreted, which cannot be compiled
    pytest.mark.skipif(
        os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"), reason="TRITON_INTERPRET is set"
    ),
]


def representative_indices() -> list[int]:
    """One configuration per kernel and hint set: attention at D=64 bf16 (the wgmma case), the rest
    their first."""
    chosen: dict[tuple[str, str], int] = {}
    for i, config in enumerate(kernels.aot_configs()):
        if config.op == "flash_attention" and not config.label.startswith("D=64 bf16"):
            continue
        chosen.setdefault((config.kernel_name, config.hints), i)
    return list(chosen.values())


def check_result(result: aot.CompileResult) -> None:
    where = f"{result.kernel} [{result.config}, hints={result.hints}] sm_{result.arch}"
    assert result.ptx_bytes > 0 and result.cubin_bytes > 0, where
    assert result.registers is not None and 0 < result.registers <= 255, (
        f"{where}: registers {result.registers}"
    )
    assert result.fits_shared, f"{where}: {result.shared_bytes} bytes of shared memory"
    assert not result.spills, (
        f"{where}: spills (stack {result.stack_bytes}, local {result.local_bytes} bytes)"
    )


def test_check_result_fails_on_a_spill():
    """The check itself: a configuration with 32 stack bytes (what D=128 fp32 dK/dV had) fails."""
    clean = dict(op="x", kernel="k", config="c", hints="all", arch=90, num_warps=4, num_stages=1,
                 registers=255, shared_bytes=0, stack_bytes=0, local_bytes=0, wgmma=False, ptx_bytes=1,
                 cubin_bytes=1)  # fmt: skip
    check_result(aot.CompileResult(**clean))
    for spilled in ({"stack_bytes": 32}, {"local_bytes": 8}, {"stack_bytes": None}):
        with pytest.raises(AssertionError, match="spills"):
            check_result(aot.CompileResult(**{**clean, **spilled}))


def test_configurations_cover_every_shape_the_runtime_accepts():
    """Every block width a norm launches with, every head dim attention accepts, both hint sets."""
    launched = {norms._block(n) for n in range(1, norms.MAX_WIDTH + 1)}
    assert launched == set(norms.AOT_WIDTHS)
    with pytest.raises(ValueError, match="exceeds"):
        norms.rms_norm_triton(torch.ones(1, norms.MAX_WIDTH + 1), None)
    compiled = {(c.kernel_name, c.constexprs.get("HEAD_DIM")) for c in kernels.aot_configs()}
    for head_dim in flash_attention.HEAD_DIMS:
        assert ("_attn_fwd_kernel", head_dim) in compiled
    hints = {}
    for c in kernels.aot_configs():
        hints.setdefault((c.kernel_name, c.label), set()).add(c.hints)
    assert all(h == {"pointers", "all"} for h in hints.values())


def test_every_kernel_compiles_for_sm90_and_sm80():
    results = aot.compile_all((90, 80), jobs=1, indices=representative_indices())
    assert {r.kernel for r in results} == {c.kernel_name for c in kernels.aot_configs()}
    for result in results:
        check_result(result)
    attention = {r.arch: r for r in results if r.kernel == "_attn_fwd_kernel" and r.hints == "all"}
    assert attention[90].wgmma, "bf16 attention on sm_90 should use Hopper's wgmma"
    assert not attention[80].wgmma, "sm_80 has no wgmma"


@pytest.mark.slow
def test_every_configuration_compiles_for_sm90_and_sm80():
    results = aot.compile_all((90, 80), jobs=min(2, os.cpu_count() or 1))
    expected = sum(
        len([c for c in kernels.aot_configs(a) if c.archs is None or a in c.archs]) for a in (90, 80)
    )
    assert len(results) == expected
    for result in results:
        check_result(result)


def test_report_cli_prints_resources(capsys):
    assert cli_main(["report", "--op", "lion_step", "--arch", "90", "--jobs", "1"]) == 0
    out = capsys.readouterr().out
    assert "_lion_kernel" in out and "sm_90" in out and "registers" in out


def test_report_cli_rejects_bad_arch(capsys):
    assert cli_main(["report", "--arch", "75"]) == 2
    assert "--arch" in capsys.readouterr().err


def test_compile_refuses_under_interpreter_env(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        aot.compile_config(kernels.aot_configs()[0], 90)
