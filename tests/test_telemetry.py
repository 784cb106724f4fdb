"""Telemetry against fake NVML / RAPL traces: energy and interpolation arithmetic checked exactly."""

from __future__ import annotations

import json
import math
import time

import pandas as pd
import pynvml
import pytest
import torch
from fakes.nvml import FakeClock, FakeCudaMemory, FakeGpu, FakeNvml
from fakes.traces import constant_power, counter_steps_every_100ms, power_step

from benchbed.measure.energy import ENERGY_SOURCES, trapezoid_j
from benchbed.measure.idle import measure_idle_power
from benchbed.measure.machine import describe_environment, machine_info
from benchbed.measure.sensors.host import WrappingCounter, find_rapl_domains
from benchbed.measure.telemetry import Telemetry, next_tick_index

GIB = 2**30


def gpu_telemetry(gpus, clock, devices=None, **kwargs):
    nvml = FakeNvml(gpus, clock)
    memory = FakeCudaMemory(
        {i: (i + 1) * GIB for i in range(len(gpus))}, {i: 2 * GIB for i in range(len(gpus))}
    )
    devices = devices or torch.device("cuda", 0)
    tel = Telemetry(devices, "cell-a", nvml=nvml, clock=clock, cuda_memory=memory, threaded=False, **kwargs)
    return tel, nvml, memory


def at(clock, tel, t_s, slow=False):
    clock.set(t_s)
    tel.sample_once(slow=slow)


def window(clock, tel, start_s, end_s, samples_s=()):
    clock.set(start_s)
    tel.window_start()
    for t_s in samples_s:
        at(clock, tel, t_s)
    clock.set(end_s)
    tel.window_end()


# -- pure arithmetic ------------------------------------------------------------------------------


def test_next_tick_index_keeps_the_grid_and_skips_missed_deadlines():
    assert next_tick_index(0.0, 0.1, 0.05, 0) == 1  # on time: the next deadline
    assert next_tick_index(0.0, 0.1, 0.37, 1) == 4  # late by two periods: 0.2, 0.3 skipped, not burst
    assert next_tick_index(10.0, 0.5, 10.0, 3) == 4  # never goes backwards


def test_trapezoid_of_a_hand_computed_trace():
    assert trapezoid_j([0.0, 1.0, 3.0], [100.0, 300.0, 300.0]) == pytest.approx(200.0 + 600.0, abs=1e-12)
    assert math.isnan(trapezoid_j([0.0, 1.0], [100.0, math.nan]))
    assert math.isnan(trapezoid_j([0.0], [100.0]))


def test_wrapping_counter_adds_the_range_on_wraparound():
    counter = WrappingCounter(range_=1000)
    assert [counter.update(raw) for raw in (900, 950, 20, 500, 100)] == [0, 50, 120, 600, 1200]


# -- NVML energy ----------------------------------------------------------------------------------


def test_counter_energy_and_integral_over_windows_exclude_evaluation():
    clock = FakeClock()
    gpu = FakeGpu(
        power_w=constant_power(200.0), energy_counter_mj=counter_steps_every_100ms(200.0, 5_000_000)
    )
    tel, _, _ = gpu_telemetry([gpu], clock)
    tel.start()
    window(clock, tel, 0.05, 1.02, samples_s=(0.25, 0.55))
    # counter ticks at 0.1 s: reads 0 at 0.05 and 10 ticks (200 J) at 1.02
    assert tel.training_energy_j() == pytest.approx(200.0, abs=1e-9)
    at(clock, tel, 2.0)  # evaluation: 200 W drawn but outside any window
    window(clock, tel, 3.05, 4.05)  # ticks 30 -> 40: 200 J
    assert tel.training_energy_j() == pytest.approx(400.0, abs=1e-9)
    # energy-to-target inside the first window: between (0.2 s, 40 J) and (0.5 s, 100 J)
    assert tel.energy_at(0.35) == pytest.approx(70.0, abs=1e-9)
    # in the second window: training time 0.97 -> 1.97 s maps to 200 -> 400 J
    assert tel.energy_at(1.47) == pytest.approx(300.0, abs=1e-9)
    assert tel.energy_at(0.97) == pytest.approx(200.0, abs=1e-9)
    assert math.isnan(tel.energy_at(5.0))
    summary = tel.stop()
    assert summary["energy_source"] == "nvml_counter"
    assert summary["energy_j"] == pytest.approx(400.0, abs=1e-9)
    # the integral sees the true 200 W over 0.97 s + 1.0 s
    assert summary["energy_integral_j"] == pytest.approx(200.0 * 1.97, abs=1e-9)
    assert summary["energy_disagreement"] == pytest.approx(abs(394.0 - 400.0) / 400.0, abs=1e-12)
    assert summary["energy_flag"] is False  # 1.97 s of windows: too short to flag
    assert summary["telemetry_window_s"] == pytest.approx(1.97, abs=1e-12)
    assert summary["mean_power_w"] == pytest.approx(400.0 / 1.97, abs=1e-9)
    assert summary["peak_power_w"] == pytest.approx(200.0)
    assert math.isnan(summary["net_energy_j"]) and math.isnan(summary["idle_power_w"])
    assert summary["sensor_errors"] == ""


def test_net_energy_subtracts_idle_power_times_training_time():
    clock = FakeClock()
    gpu = FakeGpu(power_w=constant_power(200.0), energy_counter_mj=counter_steps_every_100ms(200.0))
    tel, _, _ = gpu_telemetry([gpu], clock, idle_power_w=50.0)
    tel.start()
    window(clock, tel, 0.05, 1.02)
    summary = tel.stop()
    assert summary["idle_power_w"] == 50.0
    assert summary["net_energy_j"] == pytest.approx(200.0 - 50.0 * 0.97, abs=1e-9)


@pytest.mark.parametrize(("window_s", "flagged"), [(40.0, True), (10.0, False)])
def test_counter_and_integral_disagreeing_by_10_percent_flags_only_long_windows(window_s, flagged):
    clock = FakeClock()
    # the power reading is 10% high (a miscalibrated sensor): 220 W reported, 200 W counted
    gpu = FakeGpu(power_w=constant_power(220.0), energy_counter_mj=counter_steps_every_100ms(200.0))
    tel, _, _ = gpu_telemetry([gpu], clock)
    tel.start()
    window(clock, tel, 0.05, 0.05 + window_s)
    summary = tel.stop()
    assert summary["energy_j"] == pytest.approx(200.0 * window_s, abs=1e-6)
    assert summary["energy_integral_j"] == pytest.approx(220.0 * window_s, abs=1e-6)
    assert summary["energy_disagreement"] == pytest.approx(0.1, abs=1e-9)
    assert summary["energy_flag"] is flagged


def test_gpu_without_counter_integrates_a_power_step_and_never_calls_unsupported_functions():
    clock = FakeClock()
    gpu = FakeGpu(
        power_w=power_step(1.0, 100.0, 300.0),
        energy_counter_mj=None,  # pre-Volta: no energy counter
        unsupported={
            "nvmlDeviceGetFieldValues",
            "nvmlDeviceGetMemoryInfo_v2",
            "nvmlDeviceGetTemperatureV",
            "nvmlDeviceGetCurrentClocksEventReasons",
            "nvmlDeviceGetUtilizationRates",
        },
    )
    tel, nvml, _ = gpu_telemetry([gpu], clock)
    tel.start()
    window(clock, tel, 0.5, 1.5, samples_s=(0.9, 1.1))
    for t_s in (1.6, 1.7, 1.8):
        at(clock, tel, t_s, slow=True)
    # 0.4 s at 100 W + 0.2 s ramp (100 -> 300 W) + 0.4 s at 300 W
    assert tel.training_energy_j() == pytest.approx(40.0 + 40.0 + 120.0, abs=1e-9)
    assert tel.energy_at(0.5) == pytest.approx(40.0 + 20.0, abs=1e-9)  # halfway up the ramp
    summary = tel.stop()
    assert summary["energy_source"] == "nvml_power_integral"
    assert summary["energy_j"] == pytest.approx(200.0, abs=1e-9)
    assert math.isnan(summary["energy_disagreement"]) and summary["energy_flag"] is False
    assert summary["power_source"] == "nvmlDeviceGetPowerUsage"
    for unsupported in sorted(gpu.unsupported) + ["nvmlDeviceGetTotalEnergyConsumption"]:
        assert nvml.calls[unsupported] == 1, unsupported  # the probe only
    # the fallbacks were used instead
    assert nvml.calls["nvmlDeviceGetMemoryInfo"] > 1
    assert nvml.calls["nvmlDeviceGetTemperature"] > 1
    assert nvml.calls["nvmlDeviceGetCurrentClocksThrottleReasons"] > 1
    frame = tel.samples()
    assert "gpu0_util_pct" not in frame and "gpu0_energy_j" not in frame
    assert frame["gpu0_temperature_c"].dropna().eq(41.0).all()


def test_slow_quantities_are_read_only_on_slow_ticks():
    clock = FakeClock()
    gpu = FakeGpu(power_w=constant_power(150.0), energy_counter_mj=counter_steps_every_100ms(150.0))
    tel, nvml, _ = gpu_telemetry([gpu], clock)
    tel.start()  # one slow sample
    for t_s in (0.1, 0.2, 0.3):
        at(clock, tel, t_s, slow=False)
    at(clock, tel, 0.4, slow=True)
    frame = tel.samples()
    assert list(frame["t_s"]) == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
    assert frame["gpu0_power_w"].tolist() == [150.0] * 5
    assert frame["gpu0_mem_used_bytes"].notna().tolist() == [True, False, False, False, True]
    assert frame["gpu0_sm_clock_mhz"].iloc[0] == 1980.0
    assert frame["cell_id"].eq("cell-a").all()
    # the counter column is energy since start, in J
    assert frame["gpu0_energy_j"].tolist() == pytest.approx([0.0, 15.0, 30.0, 45.0, 60.0])


def test_two_gpus_are_sampled_and_summed():
    clock = FakeClock()
    gpus = [
        FakeGpu(power_w=constant_power(100.0), energy_counter_mj=counter_steps_every_100ms(100.0)),
        FakeGpu(power_w=constant_power(300.0), energy_counter_mj=counter_steps_every_100ms(300.0, 123_456)),
    ]
    devices = [torch.device("cuda", 0), torch.device("cuda", 1)]
    tel, _, memory = gpu_telemetry(gpus, clock, devices=devices)
    tel.start()
    window(clock, tel, 0.05, 2.05, samples_s=(1.0,))
    summary = tel.stop()
    assert summary["energy_j"] == pytest.approx(2.0 * 400.0, abs=1e-9)
    assert summary["peak_power_w"] == pytest.approx(400.0)
    assert memory.resets == [0, 1]
    assert summary["peak_mem_bytes"] == 2 * GIB  # the larger per-device peak
    assert summary["max_memory_reserved_bytes"] == 2 * GIB
    assert summary["mem_source"] == "cuda_max_allocated"
    assert summary["peak_rss_bytes"] > 0  # host memory is reported for GPU cells too
    frame = tel.samples()
    assert {"gpu0_power_w", "gpu1_power_w", "gpu1_energy_j", "rss_bytes"} <= set(frame.columns)


def test_device_lost_mid_run_stops_sampling_and_keeps_earlier_energy():
    clock = FakeClock()
    gpu = FakeGpu(
        power_w=constant_power(200.0), energy_counter_mj=counter_steps_every_100ms(200.0), lost_at_s=2.5
    )
    tel, nvml, _ = gpu_telemetry([gpu], clock)
    tel.start()
    window(clock, tel, 0.05, 1.05)
    recorded_at_eval_j = tel.training_energy_j()
    assert recorded_at_eval_j == pytest.approx(200.0, abs=1e-9)
    window(clock, tel, 2.05, 3.05, samples_s=(2.45, 2.55, 2.65))  # the GPU falls off the bus at 2.5 s
    calls_after_loss = sum(nvml.calls.values())
    at(clock, tel, 3.5, slow=True)
    assert sum(nvml.calls.values()) == calls_after_loss  # nothing more is asked of a lost device
    summary = tel.stop()
    assert math.isnan(summary["energy_j"]) and summary["energy_source"] == "unavailable"
    assert "gpu0.all sensors: NVMLError_GpuIsLost: GPU is lost at t=2.550s" in summary["sensor_errors"]
    assert summary["peak_mem_bytes"] == GIB  # the allocator statistics survive
    assert tel.energy_at(0.5) == pytest.approx(100.0, abs=1e-9)  # the first window is still known


def test_counter_failing_alone_falls_back_to_the_complete_integral():
    clock = FakeClock()

    def flaky_counter(t_s):
        if t_s > 1.0:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_UNKNOWN)
        return counter_steps_every_100ms(200.0)(t_s)

    gpu = FakeGpu(power_w=constant_power(200.0), energy_counter_mj=flaky_counter)
    tel, _, _ = gpu_telemetry([gpu], clock)
    tel.start()
    window(clock, tel, 0.05, 2.05)
    summary = tel.stop()
    assert summary["energy_source"] == "nvml_power_integral"
    assert summary["energy_j"] == pytest.approx(400.0, abs=1e-9)
    assert "gpu0.energy: NVMLError_Unknown" in summary["sensor_errors"]


def test_an_unexpected_exception_in_a_sensor_never_reaches_training():
    clock = FakeClock()

    def broken_power(t_s):
        raise ZeroDivisionError("driver bug")

    gpu = FakeGpu(power_w=constant_power(1.0), energy_counter_mj=counter_steps_every_100ms(200.0))
    tel, _, _ = gpu_telemetry([gpu], clock)
    tel.start()
    gpu.power_w = broken_power
    window(clock, tel, 0.05, 1.05, samples_s=(0.5,))
    summary = tel.stop()
    assert summary["energy_j"] == pytest.approx(200.0, abs=1e-9)
    assert math.isnan(summary["energy_integral_j"])
    assert "gpu0.power: ZeroDivisionError: driver bug" in summary["sensor_errors"]


def test_nvml_library_missing_gives_nan_energy_with_the_reason():
    clock = FakeClock()
    nvml = FakeNvml([], clock, init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)
    memory = FakeCudaMemory({0: 5 * GIB}, {0: 6 * GIB})
    tel = Telemetry(torch.device("cuda", 0), "c", nvml=nvml, clock=clock, cuda_memory=memory, threaded=False)
    tel.start()
    window(clock, tel, 0.0, 1.0)
    assert math.isnan(tel.training_energy_j())
    summary = tel.stop()
    assert summary["energy_source"] == "unavailable" and math.isnan(summary["energy_j"])
    assert math.isnan(summary["mean_power_w"]) and math.isnan(summary["peak_power_w"])
    assert "NVMLError_LibraryNotFound" in summary["sensor_errors"]
    assert summary["peak_mem_bytes"] == 5 * GIB


def test_memory_falls_back_to_nvml_used_when_the_allocator_statistics_fail():
    class NoCuda(FakeCudaMemory):
        def max_allocated_bytes(self, index):
            raise RuntimeError("no CUDA")

    clock = FakeClock()
    gpu = FakeGpu(power_w=constant_power(1.0), mem_used_bytes=7 * GIB)
    tel = Telemetry(
        "cuda:0", "c", nvml=FakeNvml([gpu], clock), clock=clock, cuda_memory=NoCuda({}, {}), threaded=False
    )
    tel.start()
    summary = tel.stop()
    assert summary["mem_source"] == "nvml_used" and summary["peak_mem_bytes"] == 7 * GIB


def test_measure_idle_power_from_the_counter():
    clock = FakeClock(0.05)
    nvml = FakeNvml(
        [FakeGpu(power_w=constant_power(60.0), energy_counter_mj=counter_steps_every_100ms(50.0))], clock
    )
    idle = measure_idle_power(
        2.0, torch.device("cuda", 0), nvml=nvml, clock=clock, sleep=clock.sleep, threaded=False
    )
    assert idle["idle_power_w"] == pytest.approx(50.0, abs=1e-9)  # 20 ticks of 5 J over 2 s
    assert idle["idle_source"] == "nvml_counter"
    assert idle["idle_window_s"] == pytest.approx(2.0)
    assert nvml.initialised == 0  # init and shutdown balanced


# -- CPU: RAPL and RSS ----------------------------------------------------------------------------


def make_rapl_tree(root, zones):
    for zone, (name, energy_uj, max_range_uj) in zones.items():
        path = root / zone
        path.mkdir(parents=True)
        (path / "name").write_text(name + "\n")
        (path / "energy_uj").write_text(f"{energy_uj}\n")
        (path / "max_energy_range_uj").write_text(f"{max_range_uj}\n")


def set_uj(root, zone, energy_uj):
    (root / zone / "energy_uj").write_text(f"{energy_uj}\n")


def test_rapl_wraparound_sums_packages_only(tmp_path):
    make_rapl_tree(
        tmp_path,
        {
            "intel-rapl:0": ("package-0", 999_000, 1_000_000),
            "intel-rapl:0:0": ("core", 10, 1_000_000),  # part of package-0: must not be added
            "intel-rapl:1": ("psys", 10, 1_000_000),  # the whole platform: must not be added
        },
    )
    clock = FakeClock()
    tel = Telemetry(torch.device("cpu"), "cpu-cell", clock=clock, rapl_root=tmp_path, threaded=False)
    tel.start()
    clock.set(1.0)
    set_uj(tmp_path, "intel-rapl:0", 999_500)
    tel.window_start()
    clock.set(2.0)
    set_uj(tmp_path, "intel-rapl:0", 200_000)  # wrapped: +500 to the top, +200_000 after
    set_uj(tmp_path, "intel-rapl:0:0", 900_000)
    set_uj(tmp_path, "intel-rapl:1", 900_000)
    tel.sample_once(slow=False)
    clock.set(3.0)
    set_uj(tmp_path, "intel-rapl:0", 600_000)
    tel.window_end()
    assert tel.training_energy_j() == pytest.approx((500 + 200_000 + 400_000) / 1e6, abs=1e-12)
    assert tel.energy_at(1.0) == pytest.approx(0.2005, abs=1e-12)
    summary = tel.stop()
    assert summary["energy_source"] == "rapl"
    assert summary["energy_j"] == pytest.approx(0.6005, abs=1e-12)
    assert math.isnan(summary["energy_integral_j"])
    # the one sample inside the window saw 0.2005 J since the window-start read a second before
    assert summary["peak_power_w"] == pytest.approx(0.2005, abs=1e-12)
    assert summary["mem_source"] == "ru_maxrss" and summary["peak_mem_bytes"] > 0
    frame = tel.samples()
    assert frame["cpu_energy_j"].tolist() == pytest.approx([0.0, 0.2010])


def test_unreadable_rapl_is_unavailable_with_the_reason(tmp_path):
    make_rapl_tree(tmp_path, {"intel-rapl:0": ("package-0", 1, 1000)})
    (tmp_path / "intel-rapl:0" / "energy_uj").write_text("not-a-number")
    domains, reason = find_rapl_domains(tmp_path)
    assert domains == [] and "intel-rapl:0/energy_uj: ValueError" in reason
    tel = Telemetry("cpu", "c", clock=FakeClock(), rapl_root=tmp_path, threaded=False)
    tel.start()
    tel.window_start()
    tel.window_end()
    summary = tel.stop()
    assert summary["energy_source"] == "unavailable" and math.isnan(summary["energy_j"])
    assert math.isnan(summary["mean_power_w"]) and math.isnan(summary["net_energy_j"])


def test_cpu_samples_record_resident_memory(tmp_path):
    tel = Telemetry("cpu", "c", clock=FakeClock(), rapl_root=tmp_path / "absent", threaded=False)
    tel.start()
    frame = tel.samples()
    assert list(frame.columns[:2]) == ["cell_id", "t_s"]
    assert frame["rss_bytes"].iloc[0] > 0


def test_empty_samples_frame_has_the_key_columns():
    tel = Telemetry("cpu", "c", threaded=False)
    frame = tel.samples()
    assert list(frame.columns) == ["cell_id", "t_s"] and len(frame) == 0


# -- the sampler thread ---------------------------------------------------------------------------


def test_sampler_thread_samples_until_stopped_and_records_lag():
    gpu = FakeGpu(power_w=constant_power(120.0), energy_counter_mj=counter_steps_every_100ms(120.0))
    nvml = FakeNvml([gpu], FakeClock())
    nvml.clock = time.perf_counter  # the fake library follows real time here
    tel = Telemetry("cuda:0", "c", power_hz=50.0, nvml=nvml, cuda_memory=FakeCudaMemory({0: 1}, {0: 1}))
    tel.start()
    tel.window_start()
    deadline = time.perf_counter() + 5.0
    while len(tel.samples()) < 4 and time.perf_counter() < deadline:
        time.sleep(0.01)
    tel.window_end()
    summary = tel.stop()
    frame = tel.samples()
    assert len(frame) >= 4
    assert frame["sample_lag_s"].iloc[1:].notna().all()
    assert frame["gpu0_power_w"].eq(120.0).all()
    assert not tel._thread.is_alive()
    assert summary["sample_count"] == len(frame)
    rows_after_stop = len(frame)
    time.sleep(0.05)
    assert len(tel.samples()) == rows_after_stop


def test_sampler_thread_stops_asking_a_lost_gpu():
    gpu = FakeGpu(power_w=constant_power(120.0), energy_counter_mj=counter_steps_every_100ms(120.0))
    nvml = FakeNvml([gpu], FakeClock())
    tel = Telemetry("cuda:0", "c", power_hz=100.0, nvml=nvml, cuda_memory=FakeCudaMemory({0: 1}, {0: 1}))
    tel.start()
    gpu.lost_at_s = -1.0
    deadline = time.perf_counter() + 5.0
    while not tel.sensor_errors and time.perf_counter() < deadline:
        time.sleep(0.01)
    calls_after_loss = sum(nvml.calls.values())
    time.sleep(0.1)  # ten more deadlines at 100 Hz
    assert sum(nvml.calls.values()) == calls_after_loss
    summary = tel.stop()
    assert "gpu0.all sensors: NVMLError_GpuIsLost" in summary["sensor_errors"]
    assert not tel._thread.is_alive()


# -- environment ----------------------------------------------------------------------------------


def test_describe_environment_on_a_machine_without_nvml_names_the_error(tmp_path):
    nvml = FakeNvml([], FakeClock(), init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)
    rows = describe_environment(nvml=nvml, rapl_root=tmp_path / "absent")
    by_quantity = {row["quantity"]: row for row in rows}
    assert set(rows[0]) == {"quantity", "available", "source", "reason"}
    assert by_quantity["gpu_energy"]["available"] is False
    assert by_quantity["gpu_energy"]["reason"].startswith("NVMLError_LibraryNotFound")
    assert (
        by_quantity["cpu_energy"]["available"] is False
        and "not present" in by_quantity["cpu_energy"]["reason"]
    )
    assert by_quantity["cpu_peak_memory"]["available"] is True


def test_describe_environment_lists_per_device_support(tmp_path):
    make_rapl_tree(tmp_path, {"intel-rapl:0": ("package-0", 1, 1000)})
    gpus = [
        FakeGpu(power_w=constant_power(1.0), energy_counter_mj=counter_steps_every_100ms(1.0)),
        FakeGpu(power_w=constant_power(1.0), energy_counter_mj=None),
    ]
    rows = {
        r["quantity"]: r for r in describe_environment(nvml=FakeNvml(gpus, FakeClock()), rapl_root=tmp_path)
    }
    assert rows["gpu_power"]["available"] is True
    assert rows["gpu_power"]["source"] == "nvmlDeviceGetFieldValues(NVML_FI_DEV_POWER_INSTANT)"
    assert rows["gpu_energy"]["available"] is False
    assert rows["gpu_energy"]["reason"].startswith(
        "gpu1: nvmlDeviceGetTotalEnergyConsumption: NVMLError_NotSupported"
    )
    assert rows["cpu_energy"]["available"] is True and rows["cpu_energy"]["source"] == "rapl:package-0"


def test_describe_environment_with_the_real_library_here():
    rows = describe_environment()
    gpu_energy = next(r for r in rows if r["quantity"] == "gpu_energy")
    if not gpu_energy["available"]:
        assert gpu_energy["reason"]  # never an unexplained "no"


def test_machine_info_is_json_safe_and_describes_the_gpus(tmp_path):
    nvml = FakeNvml([FakeGpu(name="NVIDIA H100 80GB HBM3")], FakeClock())
    info = machine_info(nvml=nvml, rapl_root=tmp_path)
    json.dumps(info, allow_nan=False)
    assert info["driver_version"] == "570.86.15" and info["nvml_available"] is True
    (gpu,) = info["gpus"]
    assert gpu["name"] == "NVIDIA H100 80GB HBM3" and gpu["power_limit_w"] == 700.0
    assert gpu["sm_clock_mhz"] == 1980 and gpu["temperature_c"] == 41
    assert info["rapl_available"] is False and info["cpu_model"]
    assert nvml.initialised == 0


def test_machine_info_without_nvml_says_why(tmp_path):
    nvml = FakeNvml([], FakeClock(), init_error=pynvml.NVML_ERROR_DRIVER_NOT_LOADED)
    info = machine_info(nvml=nvml, rapl_root=tmp_path)
    assert info["gpus"] == [] and info["nvml_reason"].startswith("NVMLError_DriverNotLoaded")


def test_summary_columns_are_those_cells_parquet_expects():
    tel = Telemetry("cpu", "c", clock=FakeClock(), threaded=False)
    tel.start()
    summary = tel.stop()
    expected = {
        "energy_j",
        "energy_source",
        "energy_integral_j",
        "energy_disagreement",
        "energy_flag",
        "mean_power_w",
        "peak_power_w",
        "idle_power_w",
        "net_energy_j",
        "peak_mem_bytes",
        "mem_source",
        "max_memory_reserved_bytes",
        "sensor_errors",
    }
    assert expected <= set(summary)
    assert summary["energy_source"] in ENERGY_SOURCES
    assert isinstance(pd.DataFrame([summary]), pd.DataFrame)
    assert tel.stop() is summary  # idempotent
