"""mamba_ssm's fused CUDA selective scan (``selective_scan_fn``), where it imports.

mamba_ssm cannot even be imported without its CUDA extension, so any import failure simply
means "not here". Its kernel takes float32, float16 and bfloat16 inputs, not float64.
"""
import functools
from typing import Callable, Optional

import torch
from torch import Tensor

from .scan_contract import ScanCall, ScanOutput

__all__ = ['load_mamba_ssm_scan', 'selective_scan_mamba_ssm', 'why_not']


@functools.lru_cache(maxsize=None)
def load_mamba_ssm_scan() -> Optional[Callable]:
    """mamba_ssm's ``selective_scan_fn``, or None where it cannot be imported."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception:  # ImportError, or OSError/RuntimeError from a broken CUDA build
        return None
    return selective_scan_fn


def why_not(call: ScanCall) -> Optional[str]:
    """Why mamba_ssm's kernel cannot run ``call``, or None when it can."""
    if load_mamba_ssm_scan() is None:
        return ('mamba_ssm does not import here (it needs its CUDA build: pip install '
                'mamba-ssm on a machine with a CUDA toolkit)')
    if call.dtype == torch.float64:
        return "mamba_ssm's kernel takes float32, float16 and bfloat16 inputs only"
    return None


def selective_scan_mamba_ssm(u: Tensor,
                             delta: Tensor,
                             A: Tensor,
                             B: Tensor,
                             C: Tensor,
                             D: Optional[Tensor] = None,
                             z: Optional[Tensor] = None,
                             delta_bias: Optional[Tensor] = None,
                             delta_softplus: bool = False,
                             return_last_state: bool = False) -> ScanOutput:
    """mamba_ssm's ``selective_scan_fn``, called as it is. Arguments as
    :func:`~mmshufflemamba.ops.selective_scan.selective_scan`; raises RuntimeError where
    mamba_ssm does not import."""
    scan = load_mamba_ssm_scan()
    if scan is None:
        raise RuntimeError(why_not(ScanCall(u.device.type, u.dtype)) + '.')
    return scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
