"""RMSNorm on CPU by the compiled kernel (``csrc/rms_norm_cpu.cpp``): one pass over the rows
forward and one backward, keeping only ``x`` (a contiguous copy where it is not contiguous)
and one ``rstd`` per row for the backward pass.

Composed of torch ops, the norm was six ops forward and about as many backward, and kept
``x * rstd`` besides ``x``. :class:`~mmshufflemamba.models.layers.RMSNorm` calls
:func:`fused_rms_norm` where :func:`fused_rms_norm_available` says it can run, and its torch
formula otherwise (and under tracers, which see torch ops: torch.compile fuses those itself).
"""
from typing import Tuple

import torch
from torch import Tensor

from .cpu_kernel import load_cpu_kernel, plain_eager_call
from .selective_scan import env_backend

__all__ = ['fused_rms_norm', 'fused_rms_norm_available']


def fused_rms_norm_available(x: Tensor, weight: Tensor) -> bool:
    """Whether :func:`fused_rms_norm` can run ``x`` with ``weight``: a plain eager call on
    CPU (:func:`~.cpu_kernel.plain_eager_call`), float32 or float64 with the weight's dtype,
    at least one channel, not an inference tensor where autograd would have to keep it,
    the compiled kernels in use (``MMSHUFFLEMAMBA_SCAN_BACKEND`` auto or ``compiled``) and
    built."""
    return (x.device.type == 'cpu' and x.dtype in (torch.float32, torch.float64) and
            weight.dtype == x.dtype and weight.device.type == 'cpu' and weight.numel() > 0 and
            plain_eager_call(x, weight) and  # first: tracers stop here
            not (x.is_inference() and torch.is_grad_enabled()) and
            env_backend() in (None, 'compiled') and load_cpu_kernel() is not None)


def _norm_rows(x: Tensor, weight: Tensor, eps: float) -> Tuple[Tensor, Tensor, Tensor]:
    """``x`` as contiguous rows ``(M, C)``, their norm ``(M, C)`` and ``rstd`` ``(M,)``."""
    rows = x.reshape(-1, x.shape[-1]).contiguous()
    return (rows, *load_cpu_kernel().rms_norm_forward(rows, weight.contiguous(), eps))


class _FusedRMSNorm(torch.autograd.Function):

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, eps: float) -> Tensor:
        rows, y, rstd = _norm_rows(x, weight, eps)
        ctx.save_for_backward(rows, weight, rstd)
        return y.view(x.shape)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy: Tensor):
        rows, weight, rstd = ctx.saved_tensors
        dx, dw = load_cpu_kernel().rms_norm_backward(
            dy.reshape(rows.shape).contiguous(), rows, weight.contiguous(), rstd)
        return dx.view(dy.shape), dw, None


def fused_rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """``x * rsqrt(mean(x**2, -1) + eps) * weight`` for ``x`` ``(..., C)``, ``weight``
    ``(C,)``, by the compiled kernel (check :func:`fused_rms_norm_available` first).
    Differentiable in ``x`` and ``weight`` (once)."""
    if x.shape[-1] != weight.numel():
        raise ValueError(f'RMSNorm of width {weight.numel()} got inputs of shape '
                         f'{tuple(x.shape)}: the last dimension must be {weight.numel()}.')
    if not torch.is_grad_enabled():  # nothing to keep for a backward pass: no Function
        return _norm_rows(x, weight, eps)[1].view(x.shape)
    return _FusedRMSNorm.apply(x, weight, eps)
