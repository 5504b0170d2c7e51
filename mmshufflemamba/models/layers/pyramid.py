"""Multi-scale feature maps from a plain (single-stride) backbone.

As in BEiT/Vim segmentation and ViTDet's simple pyramid: each map of stride ``s`` is
resampled by a factor: ``4`` and ``2`` by 2x2 stride-2 transposed convolutions (a norm and
GELU between two of them), ``1`` unchanged, ``0.5`` (and ``0.25``) by max-pooling. Then
every level is normalised (as ViTDet's pyramid and upstream ShuffleMamba's adapter do): the
maps of blocks before the last are the raw residual stream, whose scale nothing in the
backbone bounds (each block reads it through a scale-invariant norm), and an un-normalised
level lets a neck without norms (mmdet's FPN) drive it up until training diverges.
"""
from typing import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ['LayerNorm2d', 'SimplePyramid', 'build_norm2d']


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW map, each pixel on its own; the output is
    contiguous (mmcv's RoIAlign misreads the channels-last view the permute gives)."""

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W)
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias,
                         self.eps)
        return x.permute(0, 3, 1, 2).contiguous()


NORM2D_TYPES = ('LN2d', 'GN', 'BN', 'SyncBN')


def build_norm2d(norm_type: str, channels: int) -> nn.Module:
    """``'LN2d'``, ``'GN'`` (32 groups or fewer), ``'BN'`` or ``'SyncBN'``.

    ``'GN'`` works with any batch on one process. ``'LN2d'`` normalises every pixel on its
    own, so flat background comes out as strong as objects. In a pyramid feeding mmdet's
    FPN the toy Mask R-CNN did not learn with it (its stride-4 FPN output grew about
    280-fold in 300 iterations) where GN and BN learned; that run predates the fix that
    makes its output contiguous, so its RoI heads then read scrambled features.
    """
    if norm_type == 'LN2d':
        return LayerNorm2d(channels, eps=1e-6)
    if norm_type == 'GN':
        groups = next(g for g in (32, 16, 8, 4, 2, 1) if channels % g == 0)
        return nn.GroupNorm(groups, channels)
    if norm_type == 'BN':
        return nn.BatchNorm2d(channels)
    if norm_type == 'SyncBN':
        return nn.SyncBatchNorm(channels)
    raise ValueError(f'pyramid norm must be one of {NORM2D_TYPES}; got {norm_type!r}.')


def _resampler(scale: float, channels: int, norm_type: str) -> nn.Module:
    if scale == 1:
        return nn.Identity()
    if scale in (2, 4, 8):
        layers = []
        for step in range(int(scale).bit_length() - 1):
            if step:
                layers += [build_norm2d(norm_type, channels), nn.GELU()]
            layers.append(nn.ConvTranspose2d(channels, channels, 2, stride=2))
        return nn.Sequential(*layers)
    if scale in (0.5, 0.25):
        kernel = int(round(1 / scale))
        return nn.MaxPool2d(kernel, stride=kernel, ceil_mode=True)
    raise ValueError(f'pyramid scales must be among 8, 4, 2, 1, 0.5, 0.25; got {scale}.')


class SimplePyramid(nn.Module):
    """Resample ``len(scales)`` maps ``(B, C, H, W)``, map ``k`` by ``scales[k]``, and
    normalise each.

    Args:
        channels: ``C`` of every map (kept).
        scales: Resampling factor per output; ``(4, 2, 1, 0.5)`` turns stride 16 into
            strides 4, 8, 16, 32.
        norm_type: Norm between stacked transposed convs and on every output (see
            :func:`build_norm2d`).
    """

    def __init__(self, channels: int, scales: Sequence[float] = (4, 2, 1, 0.5),
                 norm_type: str = 'GN'):
        super().__init__()
        if norm_type not in NORM2D_TYPES:
            raise ValueError(f'pyramid norm must be one of {NORM2D_TYPES}; got {norm_type!r}.')
        self.scales = tuple(scales)
        self.resamplers = nn.ModuleList(_resampler(s, channels, norm_type) for s in scales)
        self.norms = nn.ModuleList(build_norm2d(norm_type, channels) for _ in scales)

    def forward(self, maps: Sequence[Tensor]) -> tuple:
        if len(maps) != len(self.resamplers):
            raise ValueError(f'SimplePyramid got {len(maps)} maps for {len(self.scales)} '
                             f'scales {self.scales}.')
        return tuple(norm(resample(x))
                     for resample, norm, x in zip(self.resamplers, self.norms, maps))
