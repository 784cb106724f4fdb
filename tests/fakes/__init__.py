"""Fake device libraries for the telemetry tests (replace NVML at the library boundary only)."""
