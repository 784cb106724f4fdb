"""The CO2 estimate: measured energy x a stated grid intensity; NaN without energy, never 0."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from benchbed import plan
from benchbed.cli import main
from benchbed.measure import carbon


def test_one_kwh_at_the_default_intensity_is_0_48_kg():
    assert carbon.DEFAULT_G_PER_KWH == 480.0  # Ember, Global Electricity Review 2024 (world, 2023)
    assert carbon.co2_kg(3.6e6, 480.0) == pytest.approx(0.48, rel=1e-15)
    assert carbon.co2_kg(1800.0, 50.0) == pytest.approx(1800 / 3.6e6 * 50 / 1000, rel=1e-15)


@pytest.mark.parametrize("energy", [None, math.nan, math.inf])
def test_no_energy_no_estimate(energy):
    assert math.isnan(carbon.co2_kg(energy, 480.0))


def test_the_environment_wins_over_the_scenario_over_the_default():
    assert carbon.grid_intensity(None, environ={}) == (480.0, carbon.DEFAULT_SOURCE)
    assert carbon.grid_intensity(30.0, environ={}) == (30.0, "scenario")
    assert carbon.grid_intensity(30.0, environ={carbon.ENV_VAR: "700"}) == (700.0, carbon.ENV_VAR)
    with pytest.raises(carbon.CarbonError, match="BENCHBED_GRID_INTENSITY: expected gCO2e/kWh as a number"):
        carbon.grid_intensity(None, environ={carbon.ENV_VAR: "coal"})
    with pytest.raises(carbon.CarbonError, match="must be a finite number >= 0"):
        carbon.grid_intensity(None, environ={carbon.ENV_VAR: "-1"})


def test_the_scenario_value_reaches_the_cell(tiny_scenario):
    scenario = plan.load(tiny_scenario(extra=""))
    assert all(c.grid_intensity is None for c in scenario.cells)
    path = tiny_scenario()
    Path(path).write_text("grid_intensity_g_per_kwh = 35\n" + Path(path).read_text())
    cell = plan.load(path).cells[0]
    assert cell.grid_intensity == 35.0
    assert plan.Cell.from_spec(cell.to_spec()).grid_intensity == 35.0
    assert cell.config_key == scenario.cells[0].config_key  # where the energy came from changes no result


def test_a_bad_environment_value_fails_the_run_at_load_time(tiny_scenario, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv(carbon.ENV_VAR, "lots")
    assert main(["run", tiny_scenario(), "--out", str(tmp_path / "never-written")]) == 2
    assert not (tmp_path / "never-written").exists()
    assert capsys.readouterr().err.strip() == (
        "benchbed: BENCHBED_GRID_INTENSITY: expected gCO2e/kWh as a number, got 'lots'"
    )


@pytest.mark.slow
def test_a_real_cell_turns_its_measured_energy_into_the_estimate(tiny_scenario, monkeypatch):
    """A real cell whose energy sensor (faked at the telemetry boundary) read 7.2 MJ: 0.96 kg at 480
    g/kWh; the same cell unmeasured: NaN."""
    from benchbed.worker import cell as worker_cell

    class Metered(worker_cell.Telemetry):
        def stop(self):
            return {**super().stop(), "energy_j": 7.2e6, "energy_source": "rapl"}

    (cell, *_) = plan.load(tiny_scenario(combos='["adamw"]', seeds="[0]")).cells
    monkeypatch.delenv(carbon.ENV_VAR, raising=False)
    row, _, _ = worker_cell.train_cell(cell.to_spec())
    if math.isnan(row["energy_j"]):  # no sensor here: no estimate, never 0
        assert math.isnan(row["co2_kg"])
    else:  # RAPL on this machine
        assert row["co2_kg"] == pytest.approx(row["energy_j"] / 3.6e6 * 480 / 1000, rel=1e-12)
    assert row["grid_intensity_g_per_kwh"] == 480.0
    monkeypatch.setattr(worker_cell, "Telemetry", Metered)
    row, _, _ = worker_cell.train_cell(cell.to_spec())
    assert row["co2_kg"] == pytest.approx(0.96, rel=1e-12)
