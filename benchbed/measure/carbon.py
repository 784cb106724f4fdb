"""CO2 estimate of a cell: measured energy times a grid carbon intensity. An ESTIMATE, labelled so.

    co2_kg = energy_j / 3.6e6 J/kWh * intensity gCO2e/kWh / 1000 g/kg

The intensity is, first match wins: the environment variable ``BENCHBED_GRID_INTENSITY`` (gCO2e per
kWh; set it where the machine is, since the grid is a property of the place, not of the
experiment), the scenario's ``grid_intensity_g_per_kwh``, else ``DEFAULT_G_PER_KWH``: the world
average carbon intensity of electricity generation in 2023, 480 gCO2e/kWh, from Ember's Global
Electricity Review 2024 (lifecycle emissions, all greenhouse gases as CO2-equivalent over 100
years). A real grid differs from it by a factor of ten either way (hydro or nuclear grids are
under 50, coal-heavy ones over 700), and the energy is the device's alone (GPU through NVML, CPU
package through RAPL) inside the training windows: no host, cooling or facility overhead (PUE).
Where energy is not measured, ``co2_kg`` is NaN, never 0.
"""

from __future__ import annotations

import math
import os

DEFAULT_G_PER_KWH = 480.0
DEFAULT_SOURCE = "world average 2023, Ember Global Electricity Review 2024"
ENV_VAR = "BENCHBED_GRID_INTENSITY"
J_PER_KWH = 3.6e6


class CarbonError(ValueError):
    """A grid intensity that is not a positive finite number; the message names where it came from."""


def _checked(value, where: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise CarbonError(f"{where}: expected gCO2e/kWh as a number, got {value!r}") from None
    if not (math.isfinite(number) and number >= 0):
        raise CarbonError(f"{where}: must be a finite number >= 0, got {value!r}")
    return number


def grid_intensity(scenario_value: float | None = None, environ=os.environ) -> tuple[float, str]:
    """(gCO2e/kWh, where it came from): the environment variable, the scenario's value, the default."""
    if environ.get(ENV_VAR):
        return _checked(environ[ENV_VAR], ENV_VAR), ENV_VAR
    if scenario_value is not None:
        return _checked(scenario_value, "grid_intensity_g_per_kwh"), "scenario"
    return DEFAULT_G_PER_KWH, DEFAULT_SOURCE


def co2_kg(energy_j: float | None, intensity_g_per_kwh: float) -> float:
    """The estimate in kg CO2e; NaN where the energy is not measured."""
    if energy_j is None or not math.isfinite(float(energy_j)):
        return math.nan
    return float(energy_j) / J_PER_KWH * intensity_g_per_kwh / 1000.0
