"""Sensors: one file per source a quantity is read from (NVML, the host's RAPL counters and RSS, the
torch.cuda allocator). ``base.py`` holds the interface; ``_template.py`` is a copy-me starting point
(docs/adding-a-sensor.md)."""
