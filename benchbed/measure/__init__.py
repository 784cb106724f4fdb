"""Measurement of one cell besides time: telemetry (power, energy, memory), idle power, the machine,
FLOPs counted on sampled steps with the device peaks for MFU/HFU, and memory by what holds it.

Nothing is re-exported here: import the submodule that holds what you need
(``benchbed.measure.telemetry.Telemetry``, ``benchbed.measure.idle.measure_idle_power``,
``benchbed.measure.machine.machine_info`` / ``describe_environment``,
``benchbed.measure.flops`` (``counting``, ``extra_work``, ``FlopSampler``, ``peak_flops``,
``utilisation``), ``benchbed.measure.memory`` (``measuring_saved``, ``storage_bytes``)), so
importing one does not import the others.
Device libraries are read through ``sensors/``: one file per source, each behind the small
``Sensor`` interface of ``sensors/base.py`` (docs/adding-a-sensor.md).

This package imports nothing else from benchbed.
"""
