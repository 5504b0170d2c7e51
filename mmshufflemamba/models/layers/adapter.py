"""The ViT-Adapter parts of upstream ShuffleMamba's dense-prediction backbone.

Upstream's COCO and ADE20K adapter configs (``MM_VSSM_ADT`` = ``Mamba_Adapter`` in
``models_openmm.py``, parts in ``adapter_modules.py``) wrap the plain Vim in a ViT-Adapter
(Chen et al., "Vision Transformer Adapter for Dense Predictions", arXiv 2205.08534):

* a convolutional spatial prior module gives maps ``c1..c4`` at strides 4/8/16/32;
* per group of blocks an *injector* (deformable attention from ``c2..c4`` into the
  tokens, scaled by a learned ``gamma`` that starts at 0) runs before the group and an
  *extractor* (deformable attention from the tokens into ``c2..c4``, then a conv FFN)
  after it; the last group has two more extractors.

Module and parameter names are upstream's, so its dense checkpoints load as they are.
Deformable attention is mmcv's ``MultiScaleDeformableAttention`` (its CUDA kernel on GPUs,
its PyTorch path elsewhere); upstream's own ``MSDeformAttn`` computes the same and has the
same four linears (``sampling_offsets``, ``attention_weights``, ``value_proj`` with
``deform_ratio`` and ``output_proj``).
"""
from typing import List, Sequence, Tuple

import torch
from torch import Tensor, nn

from .block import DropPath
from .pyramid import build_norm2d

__all__ = [
    'SpatialPriorModule', 'build_deform_attn', 'deform_attn', 'Injector', 'Extractor',
    'InteractionBlock', 'deform_inputs'
]

# (reference points, spatial shapes, level start index) of one deformable attention
DeformInputs = Tuple[Tensor, Tensor, Tensor]


def _grid_reference_points(shapes: Sequence[Tuple[int, int]], device,
                           dtype: torch.dtype) -> Tensor:
    """Pixel centres of each ``(h, w)`` grid in ``[0, 1]`` (x, y), levels concatenated:
    ``(1, sum h*w, 1, 2)``."""
    points = []
    for h, w in shapes:
        y, x = torch.meshgrid((torch.arange(h, device=device, dtype=dtype) + 0.5) / h,
                              (torch.arange(w, device=device, dtype=dtype) + 0.5) / w,
                              indexing='ij')
        points.append(torch.stack([x.reshape(-1), y.reshape(-1)], dim=-1))
    return torch.cat(points)[None, :, None]


def _levels(shapes: Sequence[Tuple[int, int]], device) -> Tuple[Tensor, Tensor]:
    spatial = torch.as_tensor(shapes, dtype=torch.long, device=device)
    start = torch.cat([spatial.new_zeros(1), spatial.prod(1).cumsum(0)[:-1]])
    return spatial, start


def deform_inputs(height: int, width: int, device,
                  dtype: torch.dtype = torch.float32) -> Tuple[DeformInputs, DeformInputs]:
    """The injector's and the extractor's attention geometry for an ``(H, W)`` image
    (reference points in ``dtype``, at least float32).

    Injector: queries on the stride-16 token grid, values ``c2..c4`` (strides 8/16/32).
    Extractor: queries on ``c2..c4``, values on the token grid.
    """
    spm = [(height // 8, width // 8), (height // 16, width // 16), (height // 32, width // 32)]
    tokens = [(height // 16, width // 16)]
    dtype = torch.promote_types(dtype, torch.float32)
    inject = (_grid_reference_points(tokens, device, dtype), *_levels(spm, device))
    extract = (_grid_reference_points(spm, device, dtype), *_levels(tokens, device))
    return inject, extract


class SpatialPriorModule(nn.Module):
    """Conv stem (strides 4/8/16/32) projected to the backbone width.

    ``(B, 3, H, W)`` -> ``c1`` ``(B, C, H/4, W/4)`` and ``c2, c3, c4`` as token sequences
    ``(B, H/8*W/8, C)``, ``(B, H/16*W/16, C)``, ``(B, H/32*W/32, C)``.
    """

    def __init__(self, inplanes: int = 64, embed_dims: int = 384, norm_type: str = 'SyncBN',
                 in_channels: int = 3):
        super().__init__()

        def conv(cin: int, cout: int, stride: int) -> List[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
                    build_norm2d(norm_type, cout), nn.ReLU(inplace=True)]

        self.stem = nn.Sequential(*conv(in_channels, inplanes, 2), *conv(inplanes, inplanes, 1),
                                  *conv(inplanes, inplanes, 1),
                                  nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
        self.conv2 = nn.Sequential(*conv(inplanes, 2 * inplanes, 2))
        self.conv3 = nn.Sequential(*conv(2 * inplanes, 4 * inplanes, 2))
        self.conv4 = nn.Sequential(*conv(4 * inplanes, 4 * inplanes, 2))
        self.fc1 = nn.Conv2d(inplanes, embed_dims, 1)
        self.fc2 = nn.Conv2d(2 * inplanes, embed_dims, 1)
        self.fc3 = nn.Conv2d(4 * inplanes, embed_dims, 1)
        self.fc4 = nn.Conv2d(4 * inplanes, embed_dims, 1)

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        c1 = self.stem(x)
        c2 = self.conv2(c1)
        c3 = self.conv3(c2)
        c4 = self.conv4(c3)
        seq = [fc(c).flatten(2).transpose(1, 2) for fc, c in
               ((self.fc2, c2), (self.fc3, c3), (self.fc4, c4))]
        return (self.fc1(c1), *seq)


def build_deform_attn(embed_dims: int, num_heads: int, num_levels: int, num_points: int,
                      value_ratio: float = 1.0) -> nn.Module:
    """mmcv's ``MultiScaleDeformableAttention`` (batch first, no dropout); ``value_ratio``
    is upstream's ``deform_ratio``, the width of the value projection."""
    from mmcv.ops import MultiScaleDeformableAttention
    if int(embed_dims * value_ratio) % num_heads:
        raise ValueError(f'embed_dims * deform_ratio = {embed_dims * value_ratio} must be '
                         f'divisible by deform_num_heads={num_heads}.')
    return MultiScaleDeformableAttention(embed_dims, num_heads, num_levels, num_points,
                                         dropout=0.0, batch_first=True,
                                         value_proj_ratio=value_ratio)


def deform_attn(attn: nn.Module, query: Tensor, value: Tensor, inputs: DeformInputs) -> Tensor:
    """The attention alone: ``query`` ``(B, Lq, C)`` samples ``value`` ``(B, Lv, C)``
    (levels concatenated) around ``inputs``' reference points; returns ``(B, Lq, C)``."""
    reference_points, spatial_shapes, level_start_index = inputs
    reference_points = reference_points.to(query.dtype).expand(
        query.shape[0], -1, attn.num_levels, -1)
    # mmcv adds `identity` to its result: a zero leaves the attention alone
    return attn(query, value=value, identity=query.new_zeros(()),
                reference_points=reference_points, spatial_shapes=spatial_shapes,
                level_start_index=level_start_index)


class MultiLevelDWConv(nn.Module):
    """One 3x3 depthwise conv applied to each of the maps ``c2, c3, c4`` of a sequence
    ``(B, 21 n, C)`` (``16n + 4n + n`` tokens, ``n = H/32 * W/32``)."""

    def __init__(self, dims: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dims, dims, 3, padding=1, groups=dims)

    def forward(self, x: Tensor, H: int, W: int) -> Tensor:  # H, W: the token grid
        B, _, C = x.shape
        shapes = [(2 * H, 2 * W), (H, W), (H // 2, W // 2)]
        parts = x.split([h * w for h, w in shapes], dim=1)
        return torch.cat([self.dwconv(p.transpose(1, 2).reshape(B, C, h, w)).flatten(2)
                          .transpose(1, 2) for p, (h, w) in zip(parts, shapes)], dim=1)


class ConvFFN(nn.Module):
    """``fc1 -> depthwise conv per level -> GELU -> fc2`` on a ``c2..c4`` sequence."""

    def __init__(self, dims: int, hidden_dims: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dims, hidden_dims)
        self.dwconv = MultiLevelDWConv(hidden_dims)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dims, dims)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor, H: int, W: int) -> Tensor:
        x = self.drop(self.act(self.dwconv(self.fc1(x), H, W)))
        return self.drop(self.fc2(x))


class Injector(nn.Module):
    """``tokens + gamma * attn(norm(tokens), norm(c))``; ``gamma`` starts at
    ``init_values`` (0 upstream: the adapter starts as the plain backbone)."""

    def __init__(self, dims: int, num_heads: int, num_points: int, deform_ratio: float,
                 init_values: float = 0.0):
        super().__init__()
        self.query_norm = nn.LayerNorm(dims, eps=1e-6)
        self.feat_norm = nn.LayerNorm(dims, eps=1e-6)
        self.attn = build_deform_attn(dims, num_heads, 3, num_points, deform_ratio)
        self.gamma = nn.Parameter(torch.full((dims, ), float(init_values)))

    def forward(self, query: Tensor, feat: Tensor, inputs: DeformInputs) -> Tensor:
        attn = deform_attn(self.attn, self.query_norm(query), self.feat_norm(feat), inputs)
        return query + self.gamma * attn


class Extractor(nn.Module):
    """``c = c + attn(norm(c), norm(tokens))``, then ``c = c + drop_path(ffn(norm(c)))``."""

    def __init__(self, dims: int, num_heads: int, num_points: int, deform_ratio: float,
                 with_cffn: bool = True, cffn_ratio: float = 0.25, drop: float = 0.0,
                 drop_path: float = 0.0):
        super().__init__()
        self.query_norm = nn.LayerNorm(dims, eps=1e-6)
        self.feat_norm = nn.LayerNorm(dims, eps=1e-6)
        self.attn = build_deform_attn(dims, num_heads, 1, num_points, deform_ratio)
        self.with_cffn = with_cffn
        if with_cffn:
            self.ffn = ConvFFN(dims, int(dims * cffn_ratio), drop)
            self.ffn_norm = nn.LayerNorm(dims, eps=1e-6)
            self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, query: Tensor, feat: Tensor, inputs: DeformInputs, H: int,
                W: int) -> Tensor:
        query = query + deform_attn(self.attn, self.query_norm(query), self.feat_norm(feat),
                                    inputs)
        if self.with_cffn:
            query = query + self.drop_path(self.ffn(self.ffn_norm(query), H, W))
        return query


class InteractionBlock(nn.Module):
    """Injector -> a group of backbone blocks -> extractor (and extra extractors).

    The blocks themselves belong to the backbone; :meth:`inject` and :meth:`extract` are
    called around them, so the backbone keeps one loop over its layers.
    """

    def __init__(self, dims: int, num_heads: int = 6, num_points: int = 4,
                 deform_ratio: float = 1.0, with_cffn: bool = True, cffn_ratio: float = 0.25,
                 drop: float = 0.0, drop_path: float = 0.0, init_values: float = 0.0,
                 extra_extractor: bool = False):
        super().__init__()
        self.injector = Injector(dims, num_heads, num_points, deform_ratio, init_values)
        kwargs = dict(num_heads=num_heads, num_points=num_points, deform_ratio=deform_ratio,
                      with_cffn=with_cffn, cffn_ratio=cffn_ratio, drop=drop,
                      drop_path=drop_path)
        self.extractor = Extractor(dims, **kwargs)
        self.extra_extractors = nn.Sequential(
            *[Extractor(dims, **kwargs) for _ in range(2)]) if extra_extractor else None

    def inject(self, tokens: Tensor, c: Tensor, inputs: DeformInputs) -> Tensor:
        return self.injector(tokens, c, inputs)

    def extract(self, c: Tensor, tokens: Tensor, inputs: DeformInputs, H: int,
                W: int) -> Tensor:
        c = self.extractor(c, tokens, inputs, H, W)
        for extractor in self.extra_extractors or ():
            c = extractor(c, tokens, inputs, H, W)
        return c
