"""Improving memory efficiency: precision, rematerialisation, offloading, LoRA, parallelism."""
