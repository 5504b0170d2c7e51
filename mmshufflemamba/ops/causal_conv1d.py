"""Causal depthwise conv1d behind one entry point (causal_conv1d's CUDA kernel or torch)."""
import functools
from typing import Callable, Optional

import torch.nn.functional as F
from torch import Tensor

__all__ = ['causal_conv1d']


@functools.lru_cache(maxsize=None)
def _cuda_causal_conv1d() -> Optional[Callable]:
    """The ``causal_conv1d`` package's CUDA kernel, or None where it cannot be imported."""
    try:
        from causal_conv1d import causal_conv1d_fn
    except Exception:  # ImportError, or a CUDA extension that fails to load
        return None
    return causal_conv1d_fn


def causal_conv1d(x: Tensor,
                  weight: Tensor,
                  bias: Optional[Tensor] = None,
                  activation: Optional[str] = None) -> Tensor:
    """Depthwise conv over L where output ``t`` sees inputs ``<= t`` only.

    Args:
        x: ``(B, D, L)``.
        weight: ``(D, K)`` (a Conv1d weight ``(D, 1, K)`` is accepted too).
        bias: ``(D,)``.
        activation: None, ``'silu'`` or ``'swish'``.

    Returns:
        ``(B, D, L)``.
    """
    if weight.dim() == 3:
        weight = weight.squeeze(1)
    if activation not in (None, 'silu', 'swish'):
        raise ValueError(f"activation must be None, 'silu' or 'swish'; got {activation!r}.")
    if x.is_cuda:
        kernel = _cuda_causal_conv1d()
        if kernel is not None:
            return kernel(x, weight, bias, activation)
    length, width = x.shape[-1], weight.shape[-1]
    out = F.conv1d(x, weight.unsqueeze(1), bias, padding=width - 1,
                   groups=x.shape[1])[..., :length]
    return out if activation is None else F.silu(out)
