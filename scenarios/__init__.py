"""Scenario matrices shipped with benchbed (quick.toml is the default of `benchbed run`)."""
