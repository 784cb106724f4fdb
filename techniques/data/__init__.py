"""Improving data efficiency: token masking, importance sampling."""
