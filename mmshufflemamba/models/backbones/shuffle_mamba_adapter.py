"""ShuffleMamba with upstream's ViT-Adapter: the backbone of the paper's COCO detector.

Upstream ShuffleMamba's COCO configs (``mask_rcnn_shufflemamba_reg_fpn_coco_{middle,base,
large}_adapter.py``) and its ADE20K ``..._base_adapter.py`` build ``MM_VSSM_ADT``
(``Mamba_Adapter`` in ``models_openmm.py``). What it computes, and what this class keeps:

* the plain backbone without ``norm_f`` and without a class token; ``pos_embed`` holds the
  ``img_size`` (224) grid and is resized bicubically at every forward;
* a spatial prior module ``spm`` (``conv_inplane`` 64) gives ``c1..c4`` (strides 4/8/16/32);
  ``level_embed`` ``(3, C)`` is added to ``c2, c3, c4``, which travel as one sequence;
* per ``interaction_indexes`` group ``[first, last]``: injector, the group's blocks (hidden
  states and residual stream carried across groups), extractor; the last group has two
  extra extractors (``use_extra_extractor``). Extractors use ``drop_path_rate`` itself
  (not the blocks' linear schedule), ``cffn_ratio`` 0.25; all adapter norms are
  LayerNorm(eps 1e-6);
* the group outputs are the *mixer outputs* of each group's last block, reshaped to the
  stride-16 grid; ``c1 += up(c2)`` (2x2 stride-2 transposed conv) and, with
  ``add_mamba_feature``, the group outputs are added at strides 4/8/16/32 (bilinear x4,
  x2, x1, x0.5); each level is normalised (``norm1..norm4``, SyncBN upstream).
* Upstream calls the blocks without its ``shuffle_forward`` here (its configs set
  ``shuffle_rate=0.``); this class shuffles as the plain backbone does, which with
  ``shuffle_rate=0`` (the default) is the same thing.

Parameter names are upstream's, so an upstream ``MM_VSSM_ADT`` checkpoint loads as it is.
"""
from typing import List, Optional, Sequence, Tuple

import math
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmshufflemamba.apis.codebases import padding_hint
from mmshufflemamba.registry import MODELS
from ..layers.adapter import InteractionBlock, SpatialPriorModule, deform_inputs
from ..layers.pyramid import build_norm2d
from ..utils import tokens_to_map
from .shuffle_mamba import ShuffleMamba

__all__ = ['ShuffleMambaAdapter']


@MODELS.register_module()
class ShuffleMambaAdapter(ShuffleMamba):
    """ShuffleMamba + ViT-Adapter: four NCHW maps at strides 4, 8, 16, 32.

    Args:
        arch: As :class:`ShuffleMamba`. Upstream's adapters are LayerNorm models
            (``rms_norm=False``): pass ``norm_type='LN'`` for base and large.
        interaction_indexes: Consecutive block groups ``[[first, last], ...]`` covering
            every block, one interaction per group, e.g. ``[[0, 5], [6, 11], [12, 17],
            [18, 23]]``.
        conv_inplane: Width of the spatial prior module's first stage.
        n_points: Sampling points per head and level of the deformable attentions.
        deform_num_heads: Their heads.
        deform_ratio: Width of their value projection relative to the embedding.
        init_values_inject: Initial injector scale ``gamma`` (0: starts as the plain Vim).
        with_cffn: Extractors end with a conv FFN.
        cffn_ratio: Its hidden width relative to the embedding.
        add_mamba_feature: Add the group outputs to the four levels.
        use_extra_extractor: Two more extractors after the last group.
        adapter_norm: Norm of the spatial prior module and of the four outputs
            (``'SyncBN'`` upstream, ``'BN'``/``'GN'`` on one process).
        **kwargs: :class:`ShuffleMamba` arguments (``img_size``, ``drop_path_rate``,
            ``shuffle_rate``, ``norm_type``, ``init_cfg``, ...). ``cls_token``,
            ``out_type``, ``final_norm`` and ``out_scales`` are fixed by the adapter;
            ``out_indices``, if given, must be the groups' last blocks.
    """
    _FIXED = dict(cls_token=None, out_type='featmap', final_norm=False, out_scales=None,
                  num_registers=0)
    # what a classification checkpoint cannot hold: new, initialised modules when it loads
    DENSE_ONLY = ('level_embed', 'spm.', 'interactions.', 'up.', 'norm1.', 'norm2.',
                  'norm3.', 'norm4.')

    def __init__(self,
                 arch='base',
                 interaction_indexes: Sequence[Sequence[int]] = (),
                 conv_inplane: int = 64,
                 n_points: int = 4,
                 deform_num_heads: int = 6,
                 deform_ratio: float = 1.0,
                 init_values_inject: float = 0.0,
                 with_cffn: bool = True,
                 cffn_ratio: float = 0.25,
                 add_mamba_feature: bool = True,
                 use_extra_extractor: bool = True,
                 adapter_norm: str = 'SyncBN',
                 out_indices: Optional[Sequence[int]] = None,
                 **kwargs):
        for key, value in self._FIXED.items():
            if key in kwargs and kwargs[key] != value:
                raise ValueError(f'ShuffleMambaAdapter fixes {key}={value!r} (upstream\'s '
                                 f'adapter); got {kwargs[key]!r}.')
            kwargs[key] = value
        groups = [tuple(int(i) for i in g) for g in interaction_indexes]
        ends = [g[-1] for g in groups]
        super().__init__(arch, out_indices=ends or -1, **kwargs)
        self._check_groups(groups)
        if out_indices is not None and sorted(i % self.num_layers for i in out_indices) != ends:
            raise ValueError(f'out_indices {list(out_indices)} must be the last blocks of the '
                             f'interaction groups, {ends}, or be left unset.')
        if self.patch_size != 16 or self.patch_stride != 16:
            raise ValueError('ShuffleMambaAdapter needs patch_size 16 and stride 16 (its '
                             'spatial prior module is aligned to the stride-16 token grid).')
        self.interaction_indexes = groups
        self.add_mamba_feature = add_mamba_feature
        C = self.embed_dims
        drop_path_rate = kwargs.get('drop_path_rate', 0.0)
        self.level_embed = nn.Parameter(torch.zeros(3, C))
        self.spm = SpatialPriorModule(conv_inplane, C, adapter_norm, self.in_channels)
        self.interactions = nn.Sequential(*[
            InteractionBlock(C, deform_num_heads, n_points, deform_ratio, with_cffn,
                             cffn_ratio, drop_path=drop_path_rate,
                             init_values=init_values_inject,
                             extra_extractor=use_extra_extractor and k == len(groups) - 1)
            for k in range(len(groups))
        ])
        self.up = nn.ConvTranspose2d(C, C, 2, 2)
        for k in range(1, 5):
            self.add_module(f'norm{k}', build_norm2d(adapter_norm, C))
        self._init_adapter_weights()

    def _check_groups(self, groups: List[Tuple[int, ...]]) -> None:
        expected_start = 0
        for group in groups:
            if len(group) != 2 or group[0] != expected_start or group[1] < group[0]:
                break
            expected_start = group[1] + 1
        else:
            if len(groups) == 4 and expected_start == self.num_layers:
                return
        raise ValueError(f'interaction_indexes must be 4 consecutive [first, last] groups '
                         f'covering blocks 0..{self.num_layers - 1} (e.g. [[0, 5], [6, 11], '
                         f'[12, 17], [18, 23]] for 24); got {[list(g) for g in groups]}.')

    def _init_adapter_weights(self) -> None:
        """Upstream's adapter init: trunc-normal(0.02) linears, He-normal (fan-out) convs,
        unit norms, mmcv's own init of the deformable attentions, N(0, 1) level embed."""
        for module in (self.up, self.spm, self.interactions):
            for m in module.modules():
                if isinstance(m, nn.Linear):
                    nn.init.trunc_normal_(m.weight, std=0.02)
                    nn.init.zeros_(m.bias)
                elif isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                    fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                    nn.init.normal_(m.weight, 0, math.sqrt(2.0 / fan_out))
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
        for m in self.interactions.modules():
            if type(m).__name__ == 'MultiScaleDeformableAttention':
                m.init_weights()
        nn.init.normal_(self.level_embed)

    def _check_input(self, x: Tensor) -> None:
        super()._check_input(x)
        for side in x.shape[2:]:
            if side % 32:
                raise ValueError(f'Input side {side} is not a multiple of 32, which the '
                                 f'adapter\'s stride-32 level needs. '
                                 f'{padding_hint(32)}')

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """Images ``(B, 3, H, W)``, sides multiples of 32 -> maps ``(B, C, H/s, W/s)``
        for ``s`` = 4, 8, 16, 32."""
        hidden, _, (H, W) = self.embed(x)  # (B, H*W, C) on the stride-16 grid
        inject_inputs, extract_inputs = deform_inputs(x.shape[2], x.shape[3], x.device,
                                                      x.dtype)
        c1, c2, c3, c4 = self.spm(x)
        sizes = [c2.shape[1], c3.shape[1], c4.shape[1]]
        c = torch.cat([c2 + self.level_embed[0], c3 + self.level_embed[1],
                       c4 + self.level_embed[2]], dim=1)
        residual = None
        perms = self.shuffle.plan(hidden.shape[1])
        group_maps = []
        for interaction, (first, last) in zip(self.interactions, self.interaction_indexes):
            hidden = interaction.inject(hidden, c, inject_inputs)
            for i in range(first, last + 1):
                hidden, residual = self.shuffle(self.layers[i], hidden, residual, perms[i])
            c = interaction.extract(c, hidden, extract_inputs, H, W)
            group_maps.append(tokens_to_map(hidden, H, W))

        c2, c3, c4 = (tokens_to_map(part, h, w) for part, (h, w) in zip(
            c.split(sizes, dim=1), [(2 * H, 2 * W), (H, W), (H // 2, W // 2)]))
        levels = [self.up(c2) + c1, c2, c3, c4]
        if self.add_mamba_feature:
            for k, (level, scale) in enumerate(zip(group_maps, (4, 2, 1, 0.5))):
                if scale != 1:
                    level = F.interpolate(level, scale_factor=scale, mode='bilinear',
                                          align_corners=False)
                levels[k] = levels[k] + level
        return tuple(getattr(self, f'norm{k + 1}')(level) for k, level in enumerate(levels))

    @property
    def out_strides(self) -> Tuple[int, ...]:
        return (4, 8, 16, 32)
