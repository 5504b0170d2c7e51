"""The Vim block: Add -> Norm -> Mixer with a separate residual stream."""
from typing import Optional, Tuple

import torch
import torch.utils.checkpoint
from torch import Tensor, nn

from ..utils.precision import at_least_float32
from .mixer import BiMambaMixer, Recipe, without_forward_hooks
from .norm import build_norm

__all__ = ['MambaBlock', 'DropPath']


class DropPath(nn.Module):
    """Stochastic depth per sample (drops the whole branch of a sample in training)."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: Tensor) -> Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0], ) + (1, ) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f'drop_prob={self.drop_prob}'


class MambaBlock(nn.Module):
    """``residual = residual + drop_path(hidden); hidden = mixer(norm(residual))``.

    The block's contract (as in mamba_ssm): it takes the previous block's output and the
    residual stream (None before the first block) and returns the new pair, both
    ``(B, L, C)``. The last block's output still has to be added and normed once more
    (the backbone's ``norm_f``).

    Args:
        embed_dims: Width ``C``.
        norm_type: ``'RMSNorm'`` or ``'LN'``.
        norm_eps: Norm epsilon.
        drop_path_rate: Stochastic depth applied to the incoming ``hidden``.
        residual_in_fp32: Keep the residual stream in float32 (also under autocast).
        mixer_cfg: Keyword arguments of :class:`BiMambaMixer`.
        with_cp: Recompute the block in backward (activation checkpointing).
    """

    def __init__(self,
                 embed_dims: int,
                 norm_type: str = 'RMSNorm',
                 norm_eps: float = 1e-5,
                 drop_path_rate: float = 0.0,
                 residual_in_fp32: bool = True,
                 mixer_cfg: Optional[dict] = None,
                 with_cp: bool = False):
        super().__init__()
        self.residual_in_fp32 = residual_in_fp32
        self.with_cp = with_cp
        self.mixer = BiMambaMixer(embed_dims, **(mixer_cfg or {}))
        self.norm = build_norm(norm_type, embed_dims, norm_eps)
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()

    def add_and_norm(self, hidden: Tensor,
                     residual: Optional[Tensor]) -> Tuple[Tensor, Tensor, Optional[Recipe]]:
        """The block's Add -> Norm; returns ``(normed, residual, recipe)``, the recipe being
        how to compute ``normed`` again where the mixer may let go of it (its ``recompute``),
        else None."""
        residual = hidden if residual is None else residual + self.drop_path(hidden)
        x = residual.to(self.norm.weight.dtype)
        normed = self.norm(x)
        if self.residual_in_fp32:
            residual = at_least_float32(residual)
        return normed, residual, self._norm_again(x)

    def _norm_again(self, x: Tensor) -> Optional[Recipe]:
        """``norm(x)`` as this forward pass computes it (this autocast state, the norm's
        ``forward``: no hook added later runs), or None where the mixer does not recompute
        or a hook could change the norm's output."""
        norm = self.norm
        # An inference tensor takes RMSNorm's torch formula where autograd is on and its
        # kernel where it is off (as in the recipe): not the same bits, so no recipe.
        if not (self.mixer.recompute and torch.is_grad_enabled()
                and without_forward_hooks(norm) and not x.is_inference()):
            return None
        return Recipe.of(lambda: norm.forward(x), [x, *norm.parameters()], x.device.type)

    def _forward(self, hidden: Tensor, residual: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
        normed, residual, recipe = self.add_and_norm(hidden, residual)
        return self.mixer(normed, recipe), residual

    def forward(self, hidden: Tensor,
                residual: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        if self.with_cp and self.training and hidden.requires_grad:
            return torch.utils.checkpoint.checkpoint(
                self._forward, hidden, residual, use_reentrant=False)
        return self._forward(hidden, residual)
