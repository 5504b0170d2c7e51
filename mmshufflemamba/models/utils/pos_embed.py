"""Position-embedding helpers."""
from typing import Optional, Tuple

import torch.nn.functional as F
from torch import Tensor

from .precision import at_least_float32
from .token_layout import TokenLayout

__all__ = ['resize_pos_embed', 'split_pos_embed']


def resize_pos_embed(pos_embed: Tensor,
                     src_shape: Tuple[int, int],
                     dst_shape: Tuple[int, int],
                     mode: str = 'bicubic',
                     always: bool = False) -> Tensor:
    """Resize a patch-grid position embedding ``(1, Hs*Ws, C)`` -> ``(1, Hd*Wd, C)``.

    Only patch positions: split off class/register slots before calling. ``always``
    resizes even to the same grid (for symbolic sizes; the result is then the input).
    """
    if not always and tuple(src_shape) == tuple(dst_shape):
        return pos_embed
    _, length, C = pos_embed.shape
    if length != src_shape[0] * src_shape[1]:
        raise ValueError(f'pos_embed has {length} positions but the source grid '
                         f'{tuple(src_shape)} has {src_shape[0] * src_shape[1]}.')
    grid = pos_embed.reshape(1, src_shape[0], src_shape[1], C).permute(0, 3, 1, 2)
    grid = F.interpolate(at_least_float32(grid), size=tuple(dst_shape), mode=mode,
                         align_corners=False)
    return grid.flatten(2).transpose(1, 2).to(pos_embed.dtype)


def split_pos_embed(pos_embed: Tensor,
                    layout: TokenLayout) -> Tuple[Optional[Tensor], Tensor]:
    """``(1, n, C)`` -> (class-token slot ``(1, 1, C)`` or None, patch part ``(1, M, C)``).

    ``layout`` is that of ``pos_embed``: ``M`` patches and the class token, if any
    (registers have their own position embedding).
    """
    i = layout.cls_index
    return (None if i is None else pos_embed[:, i:i + 1]), layout.patches(pos_embed)
