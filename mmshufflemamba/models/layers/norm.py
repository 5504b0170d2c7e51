"""Normalisation layers of the Mamba block."""
from typing import Literal

import torch
from torch import Tensor, nn

from mmshufflemamba.ops.rms_norm import fused_rms_norm, fused_rms_norm_available
from ..utils.precision import at_least_float32

__all__ = ['RMSNorm', 'build_norm']


class RMSNorm(nn.Module):
    """Root-mean-square norm with a learned scale (no bias), computed in float32 or wider.

    Args:
        dims: Size of the last dimension.
        eps: Added to the mean square.
    """

    def __init__(self, dims: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dims))

    def forward(self, x: Tensor) -> Tensor:  # (..., C) -> (..., C)
        if fused_rms_norm_available(x, self.weight):  # the compiled kernel on CPU
            return fused_rms_norm(x, self.weight, self.eps)
        x32 = at_least_float32(x)
        out = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (out * at_least_float32(self.weight)).to(x.dtype)

    def extra_repr(self) -> str:
        return f'{self.weight.shape[0]}, eps={self.eps}'


def build_norm(norm_type: Literal['RMSNorm', 'LN'], dims: int, eps: float = 1e-5) -> nn.Module:
    """``'RMSNorm'`` (Vim's default) or ``'LN'`` (LayerNorm with bias)."""
    if norm_type == 'RMSNorm':
        return RMSNorm(dims, eps)
    if norm_type == 'LN':
        return nn.LayerNorm(dims, eps=eps)
    raise ValueError(f"norm_type must be 'RMSNorm' or 'LN'; got {norm_type!r}.")
