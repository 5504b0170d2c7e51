"""A stand-in for the selective scan with its shapes and data flow but not its values, for
tracers that count the operations around the scan (tools/analysis_tools/get_flops.py).

It returns ``u + delta + sum_n B + sum_n C (+ z)``: the scan's output shape, consuming every
input a tracer would otherwise prune (and then leave the projections feeding it uncounted).
It is traceable by TorchScript, has no per-step loop, and is never chosen automatically:
a mixer runs it only when its ``scan_backend`` is ``'stand_in'``. The scan's own FLOPs come
from :func:`~mmshufflemamba.ops.scan_contract.selective_scan_flops`.
"""
from typing import Optional

from torch import Tensor

from .scan_contract import ScanCall, ScanOutput

__all__ = ['selective_scan_stand_in', 'why_not']


def why_not(call: ScanCall) -> Optional[str]:
    """Why the stand-in cannot run ``call``: it has no last state to return."""
    if call.return_last_state:
        return 'the stand-in scan has no last state to return'
    return None


def selective_scan_stand_in(u: Tensor,
                            delta: Tensor,
                            A: Tensor,
                            B: Tensor,
                            C: Tensor,
                            D: Optional[Tensor] = None,
                            z: Optional[Tensor] = None,
                            delta_bias: Optional[Tensor] = None,
                            delta_softplus: bool = False,
                            return_last_state: bool = False) -> ScanOutput:
    """``(B, D, L)`` of the scan's shape, not its values (see the module docstring).

    Checks no shapes: under a tracer, every comparison of sizes would warn.
    """
    if return_last_state:
        raise NotImplementedError(why_not(ScanCall(u.device.type, u.dtype, True)) + '.')
    out = u + delta + _summed_over_states(B) + _summed_over_states(C)
    return out if z is None else out + z


def _summed_over_states(M: Tensor) -> Tensor:
    """B or C summed over N, broadcastable to ``(B, D, L)``: ``(D, 1)`` or ``(B, 1, L)``."""
    if M.dim() == 2:  # (D, N)
        return M.sum(-1, keepdim=True)
    if M.dim() == 3:  # (B, N, L)
        return M.sum(1, keepdim=True)
    return M.sum((1, 2)).unsqueeze(1)  # (B, G, N, L)
