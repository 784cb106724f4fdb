"""Exports of finished results to the experiment trackers users already run.

``benchbed export mlflow|tensorboard|wandb DIR... [--to TARGET]`` reads the result tables after
the run (never during it: nothing of a tracker is on a cell's clock) and writes one tracker run per
cell: its configuration as parameters, its curves as step series, its summary metrics (timing,
energy, memory, the CO2 estimate as ``co2_kg_estimate``). A metric not measured is not logged
(trackers have no "not measured"; a 0 would lie) and is listed in the run's ``benchbed.not_measured``
tag. ``records`` builds what every exporter writes; one module per tracker (docs/trackers.md).
"""

from benchbed.present.export.records import CellRecord, records

__all__ = ["CellRecord", "records"]
