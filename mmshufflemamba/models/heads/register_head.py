"""The Mamba-Reg classification head: registers -> (reduction, norm) -> linear."""
from typing import Optional, Tuple

from mmpretrain.models.heads import ClsHead
from torch import Tensor, nn

from mmshufflemamba.registry import MODELS
from ..layers import build_norm

__all__ = ['RegisterClsHead']


@MODELS.register_module()
class RegisterClsHead(ClsHead):
    """Classify from the register tokens of a ``ShuffleMamba(out_type='registers')``.

    Mamba-Reg's head (``cls_reduce = r``): the ``k`` registers ``(B, k, C)``, register-major
    as the backbone returns them, are each reduced to ``C // r`` channels by one shared
    linear layer without bias (upstream ``neck``), concatenated to ``(B, k * C // r)``,
    normed (upstream ``norm_neck``; RMSNorm for the published models) and classified by
    ``fc`` (upstream ``head``). With ``r = 1`` (Mamba-Reg-T) there is neither reduction nor
    norm: the raw registers are concatenated.

    Published settings (``mambar_*_patch16_224``): tiny k=12, r=1; small k=12, r=2;
    base k=12, r=4; large k=16, r=8.

    Args:
        num_classes: Number of classes.
        in_channels: Width ``C`` of the registers.
        num_registers: ``k``.
        reduction: ``r``, the channel reduction per register (must divide ``C``).
        norm_type: ``'RMSNorm'`` or ``'LN'`` for the norm after the reduction.
        loss: Loss config (mmpretrain's).
        init_cfg: Init config.
    """

    def __init__(self,
                 num_classes: int,
                 in_channels: int,
                 num_registers: int,
                 reduction: int = 1,
                 norm_type: str = 'RMSNorm',
                 loss: dict = dict(type='CrossEntropyLoss', loss_weight=1.0),
                 init_cfg: Optional[dict] = dict(type='TruncNormal', layer='Linear',
                                                 std=0.02, bias=0.0),
                 **kwargs):
        super().__init__(loss=loss, init_cfg=init_cfg, **kwargs)
        if in_channels % reduction:
            raise ValueError(f'reduction {reduction} must divide in_channels {in_channels}.')
        self.num_registers = num_registers
        features = num_registers * in_channels // reduction
        if reduction > 1:
            self.reduction = nn.Linear(in_channels, in_channels // reduction, bias=False)
            self.norm = build_norm(norm_type, features)
        else:
            self.reduction = self.norm = nn.Identity()
        self.fc = nn.Linear(features, num_classes)

    def pre_logits(self, feats: Tuple[Tensor, ...]) -> Tensor:
        registers = feats[-1]  # (B, k, C)
        if registers.dim() != 3 or registers.shape[1] != self.num_registers:
            raise ValueError(f'RegisterClsHead expects registers of shape (B, '
                             f'{self.num_registers}, C) from a backbone with '
                             f"out_type='registers'; got {tuple(registers.shape)}.")
        return self.norm(self.reduction(registers).flatten(1))

    def forward(self, feats: Tuple[Tensor, ...]) -> Tensor:
        return self.fc(self.pre_logits(feats))
