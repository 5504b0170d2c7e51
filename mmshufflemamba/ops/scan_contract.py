"""The selective scan's contract, shared by every backend: what a call is, the run signature,
its output type, the input checks, the compute dtype, the ``D``/``z`` epilogue and the FLOP
formula.
Every backend computes, for every channel ``d`` and state ``n``::

    dt_t = softplus(delta_t + delta_bias)          (softplus only if delta_softplus)
    h_t  = exp(dt_t * A[d, n]) * h_{t-1} + dt_t * B_t[n] * u_t
    y_t  = sum_n C_t[n] * h_t[n] + D[d] * u_t
    y_t  = y_t * silu(z_t)                         (only if z is given)

A leaf module: it imports no other module of :mod:`mmshufflemamba.ops`.
"""
from typing import NamedTuple, Optional, Protocol, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    'ScanCall', 'ScanFn', 'ScanOutput', 'BrokenInstall', 'check_inputs', 'compute_dtype',
    'step_sizes',
    'skip_and_gate', 'selective_scan_flops'
]

ScanOutput = Union[Tensor, Tuple[Tensor, Tensor]]  # y (B, D, L), or (y, last state (B, D, N))


class ScanFn(Protocol):
    """The run function every backend has: the signature of mamba_ssm's ``selective_scan_fn``
    (arguments as :func:`~mmshufflemamba.ops.selective_scan.selective_scan`)."""

    def __call__(self,
                 u: Tensor,
                 delta: Tensor,
                 A: Tensor,
                 B: Tensor,
                 C: Tensor,
                 D: Optional[Tensor] = None,
                 z: Optional[Tensor] = None,
                 delta_bias: Optional[Tensor] = None,
                 delta_softplus: bool = False,
                 return_last_state: bool = False) -> ScanOutput:
        ...


class ScanCall(NamedTuple):
    """What a backend needs to know to say whether it can run a call."""
    device: str  # device type of u: 'cpu', 'cuda', ...
    dtype: torch.dtype  # dtype of u
    return_last_state: bool = False
    index: Optional[int] = None  # device index of u (None: the current device)


class BrokenInstall(str):
    """A ``why_not`` reason meaning: the backend's package is installed but unusable here
    (it failed to import, or failed its check). The automatic choice warns once with it and
    passes over the backend; a request for the backend raises it."""


def check_inputs(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor) -> None:
    """Shapes shared by every path; raises ValueError naming the input and its shape.

    ``u``, ``delta``: ``(B, D, L)``; ``A``: ``(D, N)``, real; ``B``, ``C``: ``(D, N)``,
    ``(B, N, L)`` or ``(B, G, N, L)`` with ``G`` dividing ``D``.
    """
    if u.dim() != 3 or delta.shape != u.shape:
        raise ValueError('u and delta must both have shape (B, D, L); got '
                         f'{tuple(u.shape)} and {tuple(delta.shape)}.')
    if A.dim() != 2 or A.shape[0] != u.shape[1]:
        raise ValueError(f'A must have shape (D, N) with D = {u.shape[1]}; got '
                         f'{tuple(A.shape)}.')
    if A.is_complex():
        raise NotImplementedError('complex A is not supported by mmshufflemamba.')
    _check_matrix(B, u, 'B')
    _check_matrix(C, u, 'C')


def _check_matrix(M: Tensor, u: Tensor, name: str) -> None:
    batch, channels, length = u.shape
    if M.dim() == 2 and M.shape[0] == channels:
        return
    if M.dim() in (3, 4) and M.shape[0] == batch and M.shape[-1] == length:
        if M.dim() == 4 and channels % M.shape[1]:
            raise ValueError(f'{name} has {M.shape[1]} groups, which do not divide the '
                             f'{channels} channels of u.')
        return
    raise ValueError(f'{name} must have shape (D, N), (B, N, L) or (B, G, N, L) with '
                     f'(B, D, L) = {tuple(u.shape)}; got {tuple(M.shape)}.')


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the scan computes in for inputs of ``dtype``: float64 stays float64,
    everything else (float32, bfloat16, float16) is computed in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def step_sizes(u: Tensor, delta: Tensor, A: Tensor, delta_bias: Optional[Tensor],
               delta_softplus: bool) -> Tuple[torch.dtype, Tensor, Tensor, Tensor]:
    """``u``, ``delta`` (bias added, softplus applied) and ``A`` in the compute dtype.

    Returns ``(compute, u, delta, A)`` with ``u``, ``delta`` ``(B, D, L)``, ``A`` ``(D, N)``.
    """
    compute = compute_dtype(u.dtype)
    u, delta, A = u.to(compute), delta.to(compute), A.to(compute)
    if delta_bias is not None:
        delta = delta + delta_bias.to(compute)[..., None]
    if delta_softplus:
        delta = F.softplus(delta)
    return compute, u, delta, A


def skip_and_gate(y: Tensor, u: Tensor, D: Optional[Tensor], z: Optional[Tensor]) -> Tensor:
    """``(y + D u) * silu(z)`` (either term only when given), in ``y``'s dtype.

    ``y``, ``u``, ``z``: ``(B, D, L)``; ``D``: ``(D,)``.
    """
    if D is not None:
        y = y + u * D.to(y.dtype)[:, None]
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y


def selective_scan_flops(batch: int, channels: int, length: int, state: int,
                         with_D: bool = True, with_z: bool = True) -> int:
    """Floating-point operations of one selective scan call (multiply-adds = 2).

    Per element ``(b, d, t, n)``: ``delta * A`` (1), ``exp`` (1), ``delta * u * B`` (2),
    ``h = a * h + b`` (2), ``C * h`` summed over ``n`` (2), plus ``softplus`` of delta
    per ``(b, d, t)`` counted as 1 more per state: 9 per element. Per ``(b, d, t)``: the
    ``D * u`` skip (2) and the ``silu(z)`` gate (5). Tracing FLOP counters see none of
    this (it runs in a custom kernel or a Python loop), so tools add it explicitly.
    """
    flops = 9 * batch * channels * length * state
    flops += (2 * with_D + 5 * with_z) * batch * channels * length
    return flops
