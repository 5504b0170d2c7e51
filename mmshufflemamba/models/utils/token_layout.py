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

__all__ = [
    'TokenLayout', 'cls_token_index', 'register_indices', 'tokens_to_map', 'CLS_TOKEN_LAYOUTS'
]

CLS_TOKEN_LAYOUTS = ('head', 'middle', None)


def cls_token_index(num_patches: int, layout: Optional[str]) -> Optional[int]:
    """Index of the class token (and of its ``pos_embed`` slot) among ``M + 1`` tokens."""
    if layout not in CLS_TOKEN_LAYOUTS:
        raise ValueError(f'cls_token must be one of {CLS_TOKEN_LAYOUTS}; got {layout!r}.')
    if layout is None:
        return None
    return 0 if layout == 'head' else num_patches // 2


def tokens_to_map(tokens: Tensor, height: int, width: int) -> Tensor:
    """Raster-order tokens ``(B, H*W, C)`` -> a contiguous feature map ``(B, C, H, W)``.

    Contiguous as upstream's ``.contiguous()``: the strided view ``transpose + reshape``
    gives is laid out channels-last, and mmcv 2.1's RoIAlign reads its input's memory as
    if it were contiguous, so on such a view it pools the wrong features without an error.
    """
    B, _, C = tokens.shape
    return tokens.transpose(1, 2).reshape(B, C, height, width).contiguous()


def register_indices(num_patches: int, num_registers: int) -> List[int]:
    """Indices of the ``k`` registers among ``M + k`` tokens (Mamba-Reg)."""
    block = num_patches // (num_registers + 1)
    return [(j + 1) * (block + 1) - 1 for j in range(num_registers)]


class TokenLayout:
    """The token order for ``num_patches`` patches plus a class token or registers.

    The sequence is built and read by slicing and concatenation (no index tables), so the
    same code runs for symbolic sizes under ``torch.export``/``torch.compile``.

    Args:
        num_patches: ``M``, the patches of the input's grid (an int, or a symbolic size).
        cls_token: ``'head'``, ``'middle'`` or None.
        num_registers: ``k`` registers (Mamba-Reg); excludes a class token.

    Attributes:
        cls_index: Index of the class token in the sequence, or None.
        block: Mamba-Reg's ``L = M // (k + 1)``: patches before each register.
        num_tokens: Length of the sequence.
    """

    def __init__(self, num_patches, cls_token: Optional[str] = None, num_registers: int = 0):
        if cls_token is not None and num_registers:
            raise ValueError('A class token and registers cannot be combined: Mamba-Reg '
                             'models classify from their registers and have no class '
                             'token. Set cls_token=None or num_registers=0.')
        self.num_patches = num_patches
        self.num_registers = num_registers
        self.cls_index = cls_token_index(num_patches, cls_token)
        self.block = num_patches // (num_registers + 1)
        self.num_tokens = num_patches + num_registers + (self.cls_index is not None)

    def arrange(self, patches: Tensor, extra: Optional[Tensor]) -> Tensor:
        """``(B, M, C)`` patches and ``(B, n, C)`` extra tokens (the class token or the
        registers) -> the ``(B, T, C)`` sequence."""
        if self.cls_index is not None:
            i = self.cls_index
            return torch.cat([patches[:, :i], extra, patches[:, i:]], dim=1)
        if not self.num_registers:
            return patches
        L, k = self.block, self.num_registers
        pieces = []
        for j in range(k):
            pieces += [patches[:, j * L:(j + 1) * L], extra[:, j:j + 1]]
        return torch.cat(pieces + [patches[:, k * L:]], dim=1)

    def patches(self, tokens: Tensor) -> Tensor:
        """The ``(B, M, C)`` patch tokens of a ``(B, T, C)`` sequence, in raster order."""
        if self.cls_index is not None:
            i = self.cls_index
            return torch.cat([tokens[:, :i], tokens[:, i + 1:]], dim=1)
        if not self.num_registers:
            return tokens
        L, k = self.block, self.num_registers
        pieces = [tokens[:, j * (L + 1):j * (L + 1) + L] for j in range(k)]
        return torch.cat(pieces + [tokens[:, k * (L + 1):]], dim=1)

    def registers(self, tokens: Tensor) -> Tensor:
        """The ``(B, k, C)`` registers of a ``(B, T, C)`` sequence, register-major."""
        L = self.block
        return torch.cat([tokens[:, (j + 1) * (L + 1) - 1:(j + 1) * (L + 1)]
                          for j in range(self.num_registers)], dim=1)

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(tokens={self.num_tokens}, cls_index={self.cls_index}, '
                f'registers={self.num_registers})')
