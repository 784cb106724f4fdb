"""benchbed: benchmark efficient-transformer-training techniques by time and energy to a target loss."""

__version__ = "0.1.0"
SCHEMA_VERSION = 1  # of the results directory (run.json, cells/curves/telemetry.parquet)
