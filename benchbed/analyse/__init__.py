"""Statistics and verdicts over result tables (layer 11): reads the tables, never training objects.

``bootstrap`` (resampling, medians, intervals), ``tables`` (summaries, speedups, the leaderboard),
``profiles`` (AlgoPerf performance profiles and score), ``gate`` (the regression gate's verdicts).
Imports only pandas, numpy, scipy and the result store; formatting and output are in
``benchbed.present``.
"""
