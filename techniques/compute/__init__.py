"""Improving computational efficiency: optimizers, initialisation, sparse, large batch, incremental."""
