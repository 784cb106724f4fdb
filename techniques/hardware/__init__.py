"""Hardware/algorithm co-design: models switched onto the kernels in benchbed.kernels."""
