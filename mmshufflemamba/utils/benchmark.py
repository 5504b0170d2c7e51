"""Small helpers shared by the speed and memory tools (tools/analysis_tools, benchmarks/)."""
import os
import resource
from typing import Any

import torch

__all__ = ['PeakResidentMemory', 'outputs_sum']


def _resident_mib() -> float:
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2**20


class PeakResidentMemory:
    """This process's peak resident memory above its level when this object was made (Linux).

    The peak is the process's high-water mark, so measure one thing per process.
    """

    def __init__(self):
        self.baseline_mib = _resident_mib()

    def extra_mib(self) -> float:
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        return max(peak_mib - self.baseline_mib, 0.0)


def outputs_sum(out: Any) -> torch.Tensor:
    """Sum of every tensor in a (nested) model output, in float32: a loss for timing."""
    if isinstance(out, torch.Tensor):
        return out.float().sum()
    return sum(outputs_sum(o) for o in out)
