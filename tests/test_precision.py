"""Hardware-aware precision: what the CPU computes natively (`measure.machine.cpu_capability`), a
reduced precision the CPU only emulates refused at load (exit 2, one line) or, with
`allow_emulated`, run and labelled. The capability is faked (the detection function replaced), so
these pass on AVX-512 and AVX2-only machines alike."""

from __future__ import annotations

import io
import textwrap
from contextlib import redirect_stderr, redirect_stdout

import pandas as pd
import pytest
import torch

from benchbed import cli, plan
from benchbed.measure import machine
from benchbed.plan import ScenarioError

AVX2 = {"fpu", "sse4_2", "avx", "avx2", "fma"}
AVX512_BF16 = AVX2 | {"avx512f", "avx512bw", "avx512_vnni", "avx512_bf16"}
SAPPHIRE_RAPIDS = AVX512_BF16 | {"avx512_fp16", "amx_tile", "amx_bf16", "amx_int8"}


def cap(flags: set[str], **kw):
    kw = {"machine": "x86_64", "flags_source": "/proc/cpuinfo", "isa_cap": None, **kw}
    return machine.capability_from(flags, "AVX2" if "avx512f" not in flags else "AVX512", **kw)


def test_capability_from_the_cpu_flags():
    avx2 = cap(AVX2)
    assert avx2["avx2"] and not avx2["avx512"] and not avx2["amx"]
    assert avx2["precision"]["bf16"] == "emulated" and avx2["precision"]["fp16"] == "emulated"
    assert "no avx512_bf16 / amx_bf16" in avx2["precision_reason"]["bf16"]
    zen4 = cap(AVX512_BF16)
    assert zen4["precision"]["bf16"] == "native" and zen4["precision"]["fp16"] == "emulated"
    spr = cap(SAPPHIRE_RAPIDS)
    assert spr["amx"] and spr["precision"] == {
        "bf16": "native",
        "fp16": "native",
        "int8": "native",
        "fp8": "emulated",
    }


def test_onednn_isa_cap_makes_native_precision_emulated():
    capped = cap(AVX512_BF16, isa_cap="AVX2")
    assert capped["precision"]["bf16"] == "emulated"
    assert "ONEDNN_MAX_CPU_ISA=AVX2" in capped["precision_reason"]["bf16"]
    assert cap(AVX512_BF16, isa_cap="avx512_core_bf16")["precision"]["bf16"] == "native"
    assert cap(SAPPHIRE_RAPIDS, isa_cap="AVX512_CORE_FP16")["precision"]["fp16"] == "native"  # an alias
    assert cap(AVX512_BF16, isa_cap="ALL")["precision"]["bf16"] == "native"


def test_unreadable_flags_are_unknown_and_arm_features_count():
    unknown = cap(set(), flags_source="no /proc/cpuinfo (not Linux)")
    assert set(unknown["precision"].values()) == {"unknown"}
    arm = cap({"fp", "asimd", "asimdhp", "bf16"}, machine="aarch64")
    assert arm["precision"]["bf16"] == "native" and arm["precision"]["fp16"] == "native"


def test_this_machine_is_described_and_recorded(monkeypatch):
    here = machine.cpu_capability()
    assert here["torch_capability"] == torch.backends.cpu.get_cpu_capability()
    assert set(here["precision"]) == {"bf16", "fp16", "int8", "fp8"}
    monkeypatch.setattr(machine, "cpu_capability", lambda: cap(AVX2))
    assert machine.machine_info(rapl_root="/nonexistent")["cpu_capability"]["precision"]["bf16"] == "emulated"
    out = io.StringIO()
    with redirect_stdout(out):
        assert cli.main(["env"]) == 0
    text = out.getvalue()
    assert "instruction sets AVX2" in text
    assert "bf16: emulated (no avx512_bf16 / amx_bf16): bf16_autocast refused on CPU cells" in text


SCENARIO = """
workload = "lm-tiny"
device = "{device}"
seeds = [0]
target_loss = 3.2
[budget]
steps = 2
[matrix]
techniques = ["adamw", "adamw+bf16_autocast"]
"""


def scenario_file(tmp_path, device="cpu", extra=""):
    path = tmp_path / "bf16.toml"
    path.write_text(textwrap.dedent(SCENARIO.format(device=device)) + textwrap.dedent(extra))
    return str(path)


def run_cli(*args) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = cli.main(list(args))
    return code, out.getvalue(), err.getvalue()


def test_emulated_bf16_is_refused_at_load_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(machine, "cpu_capability", lambda: cap(AVX2))
    path = scenario_file(tmp_path)
    out = tmp_path / "out"
    for extra in ([], ["--dry-run"]):
        code, _, err = run_cli("run", path, "--out", str(out), "--launcher", "subprocess", *extra)
        assert code == 2
        (line,) = err.strip().splitlines()
        assert line.startswith(f"benchbed: {path}: techniques.bf16_autocast: this CPU only emulates bf16")
        assert "allow_emulated = true" in line and 'device = "cuda"' in line
    assert not out.exists()


def test_native_bf16_loads(tmp_path, monkeypatch):
    monkeypatch.setattr(machine, "cpu_capability", lambda: cap(AVX512_BF16))
    code, out, _ = run_cli("run", scenario_file(tmp_path), "--dry-run", "--out", str(tmp_path / "o"))
    assert code == 0 and "2 cell(s)" in out


def test_the_runner_refuses_too_and_writes_nothing(tmp_path, monkeypatch):
    from benchbed.run.runner import run_scenario

    monkeypatch.setattr(machine, "cpu_capability", lambda: cap(AVX2))
    scenario = plan.load(scenario_file(tmp_path))  # a caller that did not pass `cpu`
    with pytest.raises(ScenarioError, match="only emulates bf16"):
        run_scenario(scenario, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_a_gpu_cell_is_not_checked_against_the_cpu(tmp_path):
    cells = plan.load(scenario_file(tmp_path)).cells
    on_gpu = type(cells[1])(**{**cells[1].__dict__, "device": "cuda"})
    assert plan.emulated_techniques(on_gpu, cap(AVX2)) == {}
    assert plan.emulated_techniques(cells[1], cap(AVX2)) == {"bf16_autocast": "bf16"}
    assert plan.emulated_techniques(cells[0], cap(AVX2)) == {}


def test_allow_emulated_runs_labelled_and_keeps_the_cell_identity(tmp_path, monkeypatch):
    from benchbed.worker.cell import train_cell

    monkeypatch.setattr(machine, "cpu_capability", lambda: cap(AVX2))
    plain = plan.load(scenario_file(tmp_path)).cells[1]
    allowed = plan.load(
        scenario_file(tmp_path, extra="[techniques.bf16_autocast]\nallow_emulated = true\n"),
        cpu=machine.cpu_capability(),
    ).cells[1]
    # a permission, not a configuration: the same variant, config_key and cell id
    assert (allowed.variant, allowed.config_key, allowed.cell_id) == (
        plain.variant,
        plain.config_key,
        plain.cell_id,
    )
    assert allowed.configs["bf16_autocast"].allow_emulated
    row, _, _ = train_cell(allowed.to_spec())
    assert row["emulated_precision"] == "bf16" and row["status"] in ("reached", "budget_exhausted")
    monkeypatch.setattr(machine, "cpu_capability", lambda: cap(AVX512_BF16))
    row, _, _ = train_cell(allowed.to_spec())
    assert row["emulated_precision"] is None


def test_ranked_table_says_emulated(capsys):
    from benchbed.present.ranked import print_ranked_table

    cells = pd.DataFrame(
        {
            "cell_id": ["a", "b"],
            "variant": ["adamw", "adamw+bf16_autocast"],
            "techniques": ["adamw", "adamw+bf16_autocast"],
            "workload": ["lm-tiny"] * 2,
            "device": ["cpu"] * 2,
            "config_key": ["k1", "k2"],
            "seed": [0, 0],
            "status": ["reached", "reached"],
            "time_to_target_s": [1.0, 40.0],
            "emulated_precision": [None, "bf16"],
            "is_baseline": [True, False],
            "baseline": ["adamw"] * 2,
        }
    )
    print_ranked_table(cells, "t")
    out = capsys.readouterr().out
    assert "adamw+bf16_autocast (emulated bf16)" in out
    assert "adamw (emulated" not in out


def test_bf16_on_a_gpu_that_only_emulates_it_is_refused_unless_allowed(tmp_path, monkeypatch):
    # a V100 / T4 (compute capability 7.x): torch runs bf16 there, emulated
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    with pytest.raises(ScenarioError, match="this GPU only emulates bfloat16"):
        plan.load(scenario_file(tmp_path, device="cuda"), cpu=cap(AVX2))
    allowed = "[techniques.bf16_autocast]\nallow_emulated = true\n"
    assert len(plan.load(scenario_file(tmp_path, device="cuda", extra=allowed), cpu=cap(AVX2)).cells) == 2
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)  # an A100
    assert len(plan.load(scenario_file(tmp_path, device="cuda"), cpu=cap(AVX2)).cells) == 2


def test_gpu_precision_by_compute_capability(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=0: (7, 0))
    assert machine.cuda_precision() == {
        "bf16": "emulated",
        "fp16": "native",
        "int8": "native",
        "fp8": "emulated",
    }
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=0: (9, 0))
    assert set(machine.cuda_precision().values()) == {"native"}
