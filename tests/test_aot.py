"""Ahead-of-time GPU compilation without a GPU: every Triton kernel configuration must compile to PTX
and a cubin (Triton's bundled ptxas) for sm_90 (H100/H200) and sm_80 (A100), and fit the shared
memory of each. A kernel that only works in the interpreter fails here."""

from __future__ import annotations

import os

import pytest

from benchbed import kernels
from benchbed.kernels import aot
from benchbed.kernels.cli import cli_main

pytestmark = [
    pytest.mark.skipif(not kernels.HAS_TRITON, reason="needs triton"),
    # TRITON_INTERPRET=1 at import makes Triton's own library interpreted, which cannot be compiled
    pytest.mark.skipif(
        os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"), reason="TRITON_INTERPRET is set"
    ),
]


def representative_indices() -> list[int]:
    """One configuration per kernel: attention at D=64 bf16 (the wgmma case), the rest their first."""
    chosen: dict[str, int] = {}
    for i, config in enumerate(kernels.aot_configs()):
        if config.op == "flash_attention" and not config.label.startswith("D=64 bf16"):
            continue
        chosen.setdefault(config.kernel_name, i)
    return list(chosen.values())


def check_result(result: aot.CompileResult) -> None:
    where = f"{result.kernel} [{result.config}] sm_{result.arch}"
    assert result.ptx_bytes > 0 and result.cubin_bytes > 0, where
    assert result.registers is not None and 0 < result.registers <= 255, (
        f"{where}: registers {result.registers}"
    )
    assert result.fits_shared, f"{where}: {result.shared_bytes} bytes of shared memory"


def test_every_kernel_compiles_for_sm90_and_sm80():
    results = aot.compile_all((90, 80), jobs=1, indices=representative_indices())
    assert {r.kernel for r in results} == {c.kernel_name for c in kernels.aot_configs()}
    for result in results:
        check_result(result)
    attention = {r.arch: r for r in results if r.kernel == "_attn_fwd_kernel"}
    assert attention[90].wgmma, "bf16 attention on sm_90 should use Hopper's wgmma"
    assert not attention[80].wgmma, "sm_80 has no wgmma"


@pytest.mark.slow
def test_every_configuration_compiles_for_sm90_and_sm80():
    results = aot.compile_all((90, 80), jobs=min(2, os.cpu_count() or 1))
    assert len(results) == 2 * len(kernels.aot_configs())
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
