"""Where the class token, the registers and the patches sit in the token sequence.

A Mamba scans its tokens in order, so the position of every non-patch token is part of
the model: weights trained with one layout compute something else under another. The
layouts below are the ones upstream builds, for ``M`` patches in raster order:

* ``cls_token='head'`` (ShuffleMamba, VideoMamba image models): ``[cls, p_0 .. p_{M-1}]``;
  the class token is at index 0 and ``pos_embed`` slot 0 is its position embedding.
* ``cls_token='middle'`` (Vim, ``*midclstok*``): the class token is inserted before patch
  ``M // 2``, at index ``M // 2``, before the position embedding is added, so
  ``pos_embed`` slot ``M // 2`` is its position embedding.
* ``num_registers=k`` (Mamba-Reg ``get_cls_idx``, no class token): with
  ``L = M // (k + 1)`` the sequence is ``k`` blocks ``[L patches, register j]`` and then
  the remaining ``M - k * L`` patches, so register ``j`` is at ``(j + 1) * (L + 1) - 1``
  (196 patches, 12 registers: 15, 31, ..., 191).
* neither: the patches alone.

Layouts follow the patch count of the actual input: a 128 px input (64 patches) puts 12
registers at 4, 9, ..., 59.
"""
from typing import List, Optional

import torch
from torch import Tensor

__all__ = ['TokenLayout', 'cls_token_index', 'register_indices', 'CLS_TOKEN_LAYOUTS']

CLS_TOKEN_LAYOUTS = ('head', 'middle', None)


def cls_token_index(num_patches: int, layout: Optional[str]) -> Optional[int]:
    """Index of the class token (and of its ``pos_embed`` slot) among ``M + 1`` tokens."""
    if layout not in CLS_TOKEN_LAYOUTS:
        raise ValueError(f'cls_token must be one of {CLS_TOKEN_LAYOUTS}; got {layout!r}.')
    if layout is None:
        return None
    return 0 if layout == 'head' else num_patches // 2


def register_indices(num_patches: int, num_registers: int) -> List[int]:
    """Indices of the ``k`` registers among ``M + k`` tokens (Mamba-Reg)."""
    block = num_patches // (num_registers + 1)
    return [(j + 1) * (block + 1) - 1 for j in range(num_registers)]


class TokenLayout:
    """The token order for ``num_patches`` patches plus a class token or registers.

    Args:
        num_patches: ``M``, the patches of the input's grid.
        cls_token: ``'head'``, ``'middle'`` or None.
        num_registers: ``k`` registers (Mamba-Reg); excludes a class token.

    Attributes:
        order: ``(T,)`` indices into ``cat([patches, extra], dim=1)``, where ``extra`` is the
            class token ``(B, 1, C)`` or the registers ``(B, k, C)``; None when the
            sequence is the patches alone (no reordering needed).
        cls_index: Index of the class token in the sequence, or None.
        register_index: ``(k,)`` indices of the registers, register-major.
        patch_index: ``(M,)`` indices of the patches, in raster order.
    """

    def __init__(self, num_patches: int, cls_token: Optional[str] = None,
                 num_registers: int = 0):
        if cls_token is not None and num_registers:
            raise ValueError('A class token and registers cannot be combined: Mamba-Reg '
                             'models classify from their registers and have no class '
                             'token. Set cls_token=None or num_registers=0.')
        M = num_patches
        patches = list(range(M))
        self.cls_index = cls_token_index(M, cls_token)
        self.register_index = torch.tensor(register_indices(M, num_registers),
                                           dtype=torch.long)
        if self.cls_index is not None:
            order = patches[:self.cls_index] + [M] + patches[self.cls_index:]
        elif num_registers:
            order = list(patches)
            for j, index in enumerate(self.register_index.tolist()):
                order.insert(index, M + j)
        else:
            order = patches
        self.order: Optional[Tensor] = None if order == patches else torch.tensor(order)
        self.patch_index = torch.tensor([i for i, o in enumerate(order) if o < M],
                                        dtype=torch.long)
        self.num_tokens = len(order)

    def arrange(self, patches: Tensor, extra: Optional[Tensor]) -> Tensor:
        """``(B, M, C)`` patches and ``(B, n, C)`` extra tokens -> ``(B, T, C)`` sequence."""
        if self.order is None:
            return patches
        tokens = torch.cat([patches, extra], dim=1)
        return tokens.index_select(1, self.order.to(tokens.device))

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(tokens={self.num_tokens}, cls_index={self.cls_index}, '
                f'register_index={self.register_index.tolist()})')
