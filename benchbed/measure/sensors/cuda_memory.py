"""Peak GPU memory from the torch.cuda caching allocator: what decides whether a configuration fits.

``TorchCudaMemory`` is a parameter of ``Telemetry`` (``cuda_memory=``) so tests pass a fake with the
same three methods (tests/fakes/nvml.py ``FakeCudaMemory``).
"""

from __future__ import annotations


class TorchCudaMemory:
    """The torch.cuda allocator statistics the summary uses (a parameter so tests can fake them)."""

    def reset_peak(self, index: int) -> None:
        import torch

        torch.cuda.reset_peak_memory_stats(index)

    def max_allocated_bytes(self, index: int) -> float:
        import torch

        return float(torch.cuda.max_memory_allocated(index))

    def max_reserved_bytes(self, index: int) -> float:
        import torch

        return float(torch.cuda.max_memory_reserved(index))
