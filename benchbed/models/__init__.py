"""Models trained by the workloads."""

from benchbed.models.gpt import GPT, GPTConfig

__all__ = ["GPT", "GPTConfig"]
