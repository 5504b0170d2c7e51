"""The adapter backbone computes what upstream ShuffleMamba's ``Mamba_Adapter`` computes.

The reference below is written from upstream's rules (``models_openmm.py``:
``Mamba_Adapter.forward``; ``adapter_modules.py``: ``SpatialPriorModule``, ``Injector``,
``Extractor``, ``ConvFFN``/``DWConv``, ``deform_inputs``; ``ops/modules/ms_deform_attn.py``:
``MSDeformAttn``), in float64, and *not* from this package's code: its own spatial prior
module, its own multi-scale deformable attention (bilinear sampling written out corner by
corner, zero outside the map, pixel centres at ``(i + 0.5) / size``), the blocks of
``test_upstream_parity``. Ours is what a user builds: ``ShuffleMambaAdapter`` with mmcv's
``MultiScaleDeformableAttention``.

Facts read from upstream and held here:

* SPM: stem = 3 x (3x3 conv without bias, SyncBN, ReLU), the first with stride 2, then a
  3x3 stride-2 max-pool; conv2/conv3/conv4 = 3x3 stride-2 conv + SyncBN + ReLU to 2x, 4x,
  4x ``conv_inplane``; fc1..fc4 1x1 convs with bias to the width;
* the injector's queries are the stride-16 tokens, its values c2..c4 (3 levels); the
  extractor's queries c2..c4, its value the tokens (1 level); reference points are pixel
  centres ``linspace(0.5, s - 0.5, s) / s`` of the query grids;
* injector: ``x + gamma * attn``, ``gamma`` initialised to ``init_values_inject`` = 0;
  extractor: ``c + attn`` then ``c + drop_path(ffn(ffn_norm(c)))``; adapter norms are
  LayerNorm(eps=1e-6); only the last interaction has the two extra extractors;
* ``value_proj`` is ``C -> C * deform_ratio``, ``output_proj`` back;
* group outputs are the mixer outputs of each group's last block; ``c1 = up(c2) + c1``;
  the group outputs are added after bilinear resizing by 4, 2, 1, 0.5; SyncBN per level;
  no ``norm_f``, no class token, ``pos_embed`` of the 224 px grid resized bicubically.
"""
import inspect
import math
from typing import Dict, List, Sequence, Tuple

import pytest
import torch
import torch.nn.functional as F
from helpers import load_config
from test_upstream_parity import upstream_mixer, upstream_norm

from mmshufflemamba.models import ShuffleMambaAdapter

C, DEPTH, HEADS, POINTS, RATIO, INPLANE = 32, 4, 4, 2, 0.5, 8


def small_adapter(**kwargs) -> ShuffleMambaAdapter:
    args = dict(arch=dict(embed_dims=C, num_layers=DEPTH), norm_type='LN', img_size=64,
                mixer_cfg=dict(d_state=4), conv_inplane=INPLANE, n_points=POINTS,
                deform_num_heads=HEADS, deform_ratio=RATIO, adapter_norm='BN',
                interaction_indexes=[[0, 0], [1, 1], [2, 2], [3, 3]])
    args.update(kwargs)
    return ShuffleMambaAdapter(**args)


def upstream_state_keys(depth: int, levels_with_extra: int = 3,
                        rms_norm: bool = False) -> List[str]:
    """Parameter and buffer names of upstream's ``Mamba_Adapter`` (BN buffers included),
    from its module structure; block keys as in the plain backbone (``rms_norm``: the
    blocks' norms have no bias)."""
    keys = ['patch_embed.proj.weight', 'patch_embed.proj.bias', 'pos_embed', 'level_embed']
    mixer = ['in_proj.weight', 'conv1d.weight', 'conv1d.bias', 'conv1d_b.weight',
             'conv1d_b.bias', 'x_proj.weight', 'x_proj_b.weight', 'dt_proj.weight',
             'dt_proj.bias', 'dt_proj_b.weight', 'dt_proj_b.bias', 'A_log', 'A_b_log', 'D',
             'D_b', 'out_proj.weight']
    for i in range(depth):
        keys += [f'layers.{i}.norm.weight'] + ([] if rms_norm else [f'layers.{i}.norm.bias'])
        keys += [f'layers.{i}.mixer.{k}' for k in mixer]
    bn = ['weight', 'bias', 'running_mean', 'running_var', 'num_batches_tracked']
    for conv, norm in [('stem.0', 'stem.1'), ('stem.3', 'stem.4'), ('stem.6', 'stem.7'),
                       ('conv2.0', 'conv2.1'), ('conv3.0', 'conv3.1'), ('conv4.0', 'conv4.1')]:
        keys += [f'spm.{conv}.weight'] + [f'spm.{norm}.{b}' for b in bn]
    keys += [f'spm.fc{k}.{w}' for k in range(1, 5) for w in ('weight', 'bias')]
    attn = [f'attn.{lin}.{w}' for lin in ('sampling_offsets', 'attention_weights',
                                          'value_proj', 'output_proj')
            for w in ('weight', 'bias')]
    norms = [f'{n}.{w}' for n in ('query_norm', 'feat_norm') for w in ('weight', 'bias')]
    ffn = ['ffn.fc1.weight', 'ffn.fc1.bias', 'ffn.dwconv.dwconv.weight',
           'ffn.dwconv.dwconv.bias', 'ffn.fc2.weight', 'ffn.fc2.bias', 'ffn_norm.weight',
           'ffn_norm.bias']
    for k in range(4):
        keys += [f'interactions.{k}.injector.{n}' for n in norms + attn + ['gamma']]
        extractors = ['extractor'] + ([f'extra_extractors.{j}' for j in (0, 1)]
                                      if k == levels_with_extra else [])
        for e in extractors:
            keys += [f'interactions.{k}.{e}.{n}' for n in norms + attn + ffn]
    keys += ['up.weight', 'up.bias']
    keys += [f'norm{k}.{b}' for k in range(1, 5) for b in bn]
    return keys


# ------------------------------------------------------------------ upstream, transcribed
def ref_bn(x, sd, name, eps=1e-5):
    shape = (1, -1, 1, 1)
    return ((x - sd[f'{name}.running_mean'].view(shape))
            / torch.sqrt(sd[f'{name}.running_var'].view(shape) + eps)
            * sd[f'{name}.weight'].view(shape) + sd[f'{name}.bias'].view(shape))


def ref_spm(sd, x):
    def cbr(x, conv, norm, stride):
        x = F.conv2d(x, sd[f'spm.{conv}.weight'], stride=stride, padding=1)
        return torch.relu(ref_bn(x, sd, f'spm.{norm}'))

    c1 = cbr(cbr(cbr(x, 'stem.0', 'stem.1', 2), 'stem.3', 'stem.4', 1), 'stem.6', 'stem.7', 1)
    c1 = F.max_pool2d(c1, 3, 2, 1)
    c2 = cbr(c1, 'conv2.0', 'conv2.1', 2)
    c3 = cbr(c2, 'conv3.0', 'conv3.1', 2)
    c4 = cbr(c3, 'conv4.0', 'conv4.1', 2)
    return [F.conv2d(c, sd[f'spm.fc{k}.weight'], sd[f'spm.fc{k}.bias'])
            for k, c in enumerate((c1, c2, c3, c4), start=1)]


def centres(shapes: Sequence[Tuple[int, int]]) -> torch.Tensor:
    """(sum h*w, 2) pixel centres (x, y) in [0, 1], row-major per level."""
    points = []
    for h, w in shapes:
        for i in range(h):
            for j in range(w):
                points.append(((j + 0.5) / w, (i + 0.5) / h))
    return torch.tensor(points, dtype=torch.float64)


def bilinear_zero_padded(v: torch.Tensor, px: torch.Tensor, py: torch.Tensor) -> torch.Tensor:
    """Sample ``v`` (B, h, w, heads, d) at pixel coordinates px, py (B, Lq, heads, P):
    the four neighbours weighted by distance, zero outside -> (B, Lq, heads, P, d)."""
    B, h, w, heads, d = v.shape
    out = v.new_zeros(*px.shape, d)
    x0, y0 = torch.floor(px), torch.floor(py)
    b_idx = torch.arange(B).view(B, 1, 1, 1)
    h_idx = torch.arange(heads).view(1, 1, heads, 1)
    for xi in (x0, x0 + 1):
        for yi in (y0, y0 + 1):
            weight = (1 - (px - xi).abs()) * (1 - (py - yi).abs())
            inside = (xi >= 0) & (xi <= w - 1) & (yi >= 0) & (yi <= h - 1)
            xc, yc = xi.clamp(0, w - 1).long(), yi.clamp(0, h - 1).long()
            out = out + (weight * inside)[..., None] * v[b_idx, yc, xc, h_idx]
    return out


def ref_msda(sd, name, query, value, ref_points, shapes, heads=HEADS, points=POINTS):
    """Upstream ``MSDeformAttn.forward`` with 2-d reference points (no padding mask)."""
    B, Lq, _ = query.shape
    levels = len(shapes)
    lin = lambda t, n: t @ sd[f'{name}.{n}.weight'].t() + sd[f'{name}.{n}.bias']  # noqa
    v = lin(value, 'value_proj')
    d = v.shape[-1] // heads
    offsets = lin(query, 'sampling_offsets').view(B, Lq, heads, levels, points, 2)
    weights = lin(query, 'attention_weights').view(B, Lq, heads, levels * points)
    weights = weights.softmax(-1).view(B, Lq, heads, levels, points)
    out = query.new_zeros(B, Lq, heads, d)
    start = 0
    for lvl, (h, w) in enumerate(shapes):
        v_l = v[:, start:start + h * w].reshape(B, h, w, heads, d)
        start += h * w
        loc_x = ref_points[None, :, None, None, 0] + offsets[:, :, :, lvl, :, 0] / w
        loc_y = ref_points[None, :, None, None, 1] + offsets[:, :, :, lvl, :, 1] / h
        sampled = bilinear_zero_padded(v_l, loc_x * w - 0.5, loc_y * h - 0.5)
        out = out + (weights[:, :, :, lvl, :, None] * sampled).sum(3)
    return lin(out.reshape(B, Lq, heads * d), 'output_proj')


def ref_ln(x, sd, name, eps=1e-6):
    return F.layer_norm(x, x.shape[-1:], sd[f'{name}.weight'], sd[f'{name}.bias'], eps)


def ref_conv_ffn(sd, name, x, H, W):
    n = x.shape[1] // 21
    y = x @ sd[f'{name}.fc1.weight'].t() + sd[f'{name}.fc1.bias']
    B, _, D = y.shape
    pieces = [(y[:, :16 * n], 2 * H, 2 * W), (y[:, 16 * n:20 * n], H, W),
              (y[:, 20 * n:], H // 2, W // 2)]
    y = torch.cat([F.conv2d(p.transpose(1, 2).reshape(B, D, h, w),
                            sd[f'{name}.dwconv.dwconv.weight'], sd[f'{name}.dwconv.dwconv.bias'],
                            padding=1, groups=D).flatten(2).transpose(1, 2)
                   for p, h, w in pieces], dim=1)
    y = F.gelu(y)
    return y @ sd[f'{name}.fc2.weight'].t() + sd[f'{name}.fc2.bias']


def upstream_adapter_forward(sd: Dict[str, torch.Tensor], x: torch.Tensor,
                             groups, img_size: int = 64) -> List[torch.Tensor]:
    B, _, h_img, w_img = x.shape
    H, W = h_img // 16, w_img // 16
    spm_shapes = [(h_img // 8, w_img // 8), (H, W), (h_img // 32, w_img // 32)]
    c1, c2, c3, c4 = ref_spm(sd, x)
    seqs = [c.flatten(2).transpose(1, 2) + sd['level_embed'][k]
            for k, c in enumerate((c2, c3, c4))]
    c = torch.cat(seqs, dim=1)

    tokens = F.conv2d(x, sd['patch_embed.proj.weight'], sd['patch_embed.proj.bias'],
                      stride=16).flatten(2).transpose(1, 2)
    g = img_size // 16
    pos = sd['pos_embed'].reshape(1, g, g, -1).permute(0, 3, 1, 2)
    pos = F.interpolate(pos, size=(H, W), mode='bicubic', align_corners=False)
    hidden = tokens + pos.flatten(2).transpose(1, 2)

    inject_ref, extract_ref = centres([(H, W)]), centres(spm_shapes)
    residual, outs = None, []
    for k, (first, last) in enumerate(groups):
        pre = f'interactions.{k}.'
        attn = ref_msda(sd, pre + 'injector.attn', ref_ln(hidden, sd, pre + 'injector.query_norm'),
                        ref_ln(c, sd, pre + 'injector.feat_norm'), inject_ref, spm_shapes)
        hidden = hidden + sd[pre + 'injector.gamma'] * attn
        for i in range(first, last + 1):
            p = {key[len(f'layers.{i}.mixer.'):]: v for key, v in sd.items()
                 if key.startswith(f'layers.{i}.mixer.')}
            residual = hidden if residual is None else residual + hidden
            normed = upstream_norm(residual, sd[f'layers.{i}.norm.weight'],
                                   sd[f'layers.{i}.norm.bias'])
            hidden = upstream_mixer(p, normed)
        names = ['extractor'] + (['extra_extractors.0', 'extra_extractors.1']
                                 if k == len(groups) - 1 else [])
        for e in names:
            e = pre + e
            c = c + ref_msda(sd, e + '.attn', ref_ln(c, sd, e + '.query_norm'),
                             ref_ln(hidden, sd, e + '.feat_norm'), extract_ref, [(H, W)])
            c = c + ref_conv_ffn(sd, e + '.ffn', ref_ln(c, sd, e + '.ffn_norm'), H, W)
        outs.append(hidden.transpose(1, 2).reshape(B, -1, H, W))

    n2, n3 = 4 * H * W, H * W
    c2 = c[:, :n2].transpose(1, 2).reshape(B, -1, 2 * H, 2 * W)
    c3 = c[:, n2:n2 + n3].transpose(1, 2).reshape(B, -1, H, W)
    c4 = c[:, n2 + n3:].transpose(1, 2).reshape(B, -1, H // 2, W // 2)
    c1 = F.conv_transpose2d(c2, sd['up.weight'], sd['up.bias'], stride=2) + c1
    x1 = F.interpolate(outs[0], scale_factor=4, mode='bilinear', align_corners=False)
    x2 = F.interpolate(outs[1], scale_factor=2, mode='bilinear', align_corners=False)
    x4 = F.interpolate(outs[3], scale_factor=0.5, mode='bilinear', align_corners=False)
    levels = [c1 + x1, c2 + x2, c3 + outs[2], c4 + x4]
    return [ref_bn(f, sd, f'norm{k}') for k, f in enumerate(levels, start=1)]


def randomise(model: torch.nn.Module, seed: int = 0) -> None:
    """Move every weight off its initial value (gamma off 0, offsets off the grid,
    BN statistics off 0/1), so that every path contributes."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            scale = 0.5 if name.endswith('gamma') else 0.1
            p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * scale)
        for name, b in model.named_buffers():
            if name.endswith('running_mean'):
                b.copy_(torch.randn(b.shape, generator=gen) * 0.1)
            elif name.endswith('running_var'):
                b.copy_(torch.rand(b.shape, generator=gen) + 0.5)


# ------------------------------------------------------------------------------ tests
def test_adapter_state_dict_is_upstreams_layout():
    model = small_adapter()
    assert sorted(model.state_dict()) == sorted(upstream_state_keys(DEPTH))
    sd = model.state_dict()
    assert sd['interactions.0.injector.attn.sampling_offsets.weight'].shape == (
        HEADS * 3 * POINTS * 2, C)
    assert sd['interactions.0.extractor.attn.sampling_offsets.weight'].shape == (
        HEADS * 1 * POINTS * 2, C)
    assert sd['interactions.0.extractor.attn.value_proj.weight'].shape == (int(C * RATIO), C)
    assert sd['interactions.0.extractor.ffn.fc1.weight'].shape == (C // 4, C)
    assert sd['pos_embed'].shape == (1, 16, C)  # 64 px / 16: no class-token slot
    assert sd['spm.conv4.0.weight'].shape == (4 * INPLANE, 4 * INPLANE, 3, 3)
    assert torch.all(sd['interactions.2.injector.gamma'] == 0)  # init_values_inject = 0


@pytest.mark.parametrize('groups', [[[0, 0], [1, 1], [2, 2], [3, 3]],
                                    [[0, 1], [2, 2], [3, 3], [4, 5]]])
def test_adapter_matches_upstream_in_float64(groups):
    depth = groups[-1][-1] + 1
    model = small_adapter(arch=dict(embed_dims=C, num_layers=depth),
                          interaction_indexes=groups).double().eval()
    randomise(model)
    x = torch.randn(2, 3, 96, 128, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model(x)
        ref = upstream_adapter_forward(
            {k: v.double() if v.is_floating_point() else v
             for k, v in model.state_dict().items()}, x, groups)
    assert [tuple(o.shape) for o in ours] == [(2, C, 24, 32), (2, C, 12, 16), (2, C, 6, 8),
                                              (2, C, 3, 4)]
    for level, (a, b) in enumerate(zip(ours, ref)):
        err = (a - b).abs().max().item()
        assert err < 1e-9 * max(1.0, b.abs().max().item()), f'level {level}: {err}'


def test_adapter_output_reacts_to_every_part():
    """The reference comparison is only meaningful if gamma, the extractors and the
    group outputs all reach the outputs: zeroing each changes them."""
    model = small_adapter().double().eval()
    randomise(model)
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        base = model(x)
        for param in ('interactions.1.injector.gamma',
                      'interactions.3.extra_extractors.1.ffn.fc2.weight',
                      'interactions.0.extractor.attn.output_proj.weight'):
            saved = model.get_parameter(param).clone()
            model.get_parameter(param).zero_()
            changed = model(x)
            model.get_parameter(param).copy_(saved)
            assert max((a - b).abs().max().item() for a, b in zip(base, changed)) > 1e-6, param


def test_dense_outputs_are_contiguous_as_roi_align_reads_them():
    """mmcv 2.1's RoIAlign reads its input's memory as if it were contiguous: on the
    channels-last view that ``tokens.transpose(1, 2).reshape(B, C, H, W)`` gives, it pools
    other values and raises nothing (the toy adapter detector trained, but its RoI heads
    saw scrambled features: box mAP 0.001). Upstream's maps are ``.contiguous()``; so are
    those of both our dense backbones."""
    from mmcv.ops import roi_align

    from mmshufflemamba.models import ShuffleMamba
    level = torch.randn(1, 8, 16, 16)
    rois = torch.tensor([[0, 1.0, 2.0, 11.0, 13.0]])
    pooled = roi_align(level, rois, (4, 4), 1.0, 2, 'avg', True)
    strided = roi_align(level.contiguous(memory_format=torch.channels_last), rois, (4, 4),
                        1.0, 2, 'avg', True)
    assert (pooled - strided).abs().max() > 0.1  # the reason for this test

    plain = dict(arch=dict(embed_dims=C, num_layers=DEPTH), img_size=64,
                 mixer_cfg=dict(d_state=4), cls_token=None, out_type='featmap')
    models = {'adapter': small_adapter(),
              'featmap': ShuffleMamba(**plain, out_indices=(1, 3)),
              **{f'pyramid {norm}': ShuffleMamba(**plain, out_indices=(0, 1, 2, 3),
                                                 out_scales=(4, 2, 1, 0.5), pyramid_norm=norm)
                 for norm in ('GN', 'LN2d')}}
    x = torch.randn(2, 3, 64, 96)
    for name, model in models.items():
        with torch.no_grad():
            outs = model.eval()(x)
        assert all(out.dim() == 4 and out.is_contiguous() for out in outs), name


def test_adapter_trains_and_backpropagates_into_every_part():
    # a batch of 8: drop-path (0.1) drops a branch for the whole batch with odds 1e-8 (a
    # batch of 2 left some block without gradient in about 1 run in 10)
    torch.manual_seed(0)
    model = small_adapter(shuffle_rate=0.5, drop_path_rate=0.1).train()
    randomise(model)
    outs = model(torch.randn(8, 3, 64, 64))
    sum(o.pow(2).mean() for o in outs).backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or
               not torch.isfinite(p.grad).all() or p.grad.abs().sum() == 0]
    assert not no_grad


@pytest.mark.parametrize('kwargs, message', [
    (dict(interaction_indexes=[[0, 1], [2, 3]]), '4 consecutive'),
    (dict(interaction_indexes=[[0, 0], [2, 2], [3, 3], [3, 3]]), '4 consecutive'),
    (dict(cls_token='head'), 'fixes cls_token'),
    (dict(out_scales=(4, 2, 1, 0.5)), 'fixes out_scales'),
    (dict(out_indices=(0, 1, 2, 2)), 'last blocks of the interaction groups'),
    (dict(deform_num_heads=5), 'divisible by deform_num_heads'),
    (dict(patch_stride=8), 'patch_size 16 and stride 16'),
])
def test_adapter_refuses_what_upstream_cannot_mean(kwargs, message):
    with pytest.raises(ValueError, match=message):
        small_adapter(**kwargs)


def test_adapter_needs_sides_of_multiples_of_32():
    with pytest.raises(ValueError, match='multiple of 32'):
        small_adapter()(torch.randn(1, 3, 48, 64))


def test_classification_checkpoint_loads_strictly_with_new_adapter_modules(tmp_path):
    """A classifier's backbone (head class token, norm_f) loads into the adapter: its
    class-token slot and final norm are dropped on purpose, the adapter's modules are
    reported new, and every block tensor is taken over."""
    from mmshufflemamba.models import ShuffleMamba
    from mmshufflemamba.models.utils import load_pretrained
    plain = ShuffleMamba(arch=dict(embed_dims=C, num_layers=DEPTH), norm_type='LN',
                         img_size=64, mixer_cfg=dict(d_state=4), cls_token='head')
    state = {'state_dict': {'backbone.' + k: v for k, v in plain.state_dict().items()}}
    state['state_dict']['head.fc.weight'] = torch.zeros(3, C)
    path = str(tmp_path / 'cls.pth')
    torch.save(state, path)
    model = small_adapter(init_cfg=dict(type='Pretrained', checkpoint=path, prefix='backbone.'))
    report = load_pretrained(model, model.fit_target(), path, 'backbone.',
                             dense_only=model.DENSE_ONLY)
    assert report['missing'] == [] and report['unexpected'] == []
    assert 'cls_token' in report['dropped']
    assert any(k.startswith('norm_f.') for k in report['dropped'])
    assert report['new'] and all(k.startswith(model.DENSE_ONLY) for k in report['new'])
    assert torch.equal(model.layers[2].mixer.in_proj.weight, plain.layers[2].mixer.in_proj.weight)
    assert torch.equal(model.pos_embed, plain.pos_embed[:, 1:])

    rms = ShuffleMamba(arch=dict(embed_dims=C, num_layers=DEPTH), img_size=64,
                       mixer_cfg=dict(d_state=4))
    torch.save({'state_dict': rms.state_dict()}, path)
    with pytest.raises(ValueError, match="norm_type='RMSNorm'"):
        load_pretrained(model, model.fit_target(), path, dense_only=model.DENSE_ONLY)


# ---------------------------------------------------------------- configs, item by item
# upstream detection/configs/shufflemamba/mask_rcnn_shufflemamba_reg_fpn_coco_*_adapter.py
UPSTREAM_COCO = {
    'm': dict(embed_dim=576, depth=32, drop_path_rate=0.4, deform_num_heads=12,
              interaction_indexes=[[0, 7], [8, 15], [16, 23], [24, 31]]),
    'b': dict(embed_dim=768, depth=24, drop_path_rate=0.3, deform_num_heads=12,
              interaction_indexes=[[0, 5], [6, 11], [12, 17], [18, 23]]),
    'l': dict(embed_dim=1024, depth=48, drop_path_rate=0.5, deform_num_heads=16,
              interaction_indexes=[[0, 11], [12, 23], [24, 35], [36, 47]]),
}
UPSTREAM_COMMON = dict(img_size=224, patch_size=16, drop_rate=0.0, shuffle_rate=0.0,
                       residual_in_fp32=True, rms_norm=False, conv_inplane=64, n_points=4,
                       cffn_ratio=0.25, deform_ratio=0.5)


def assert_backbone_is_upstreams(backbone, upstream: dict) -> None:
    """The config's backbone arguments mean upstream's (read without building the
    full-size model: the arch name resolves through the zoo)."""
    arch = ShuffleMambaAdapter.arch_zoo[backbone.arch]
    assert (arch['embed_dims'], arch['num_layers']) == (upstream['embed_dim'],
                                                        upstream['depth'])
    assert backbone.get('norm_type', arch.get('norm_type')) == 'LN'  # rms_norm=False
    assert backbone.type == 'mmshufflemamba.ShuffleMambaAdapter'
    assert backbone.img_size == upstream['img_size']
    assert backbone.patch_size == upstream['patch_size'] and 'patch_stride' not in backbone
    ours = {key: backbone[key] for key in (
        'drop_rate', 'drop_path_rate', 'shuffle_rate', 'residual_in_fp32', 'conv_inplane',
        'n_points', 'deform_num_heads', 'cffn_ratio', 'deform_ratio')}
    assert ours == {key: upstream[key] for key in ours}
    assert [list(g) for g in backbone.interaction_indexes] == upstream['interaction_indexes']
    assert backbone.adapter_norm == 'SyncBN'  # SpatialPriorModule and norm1..4
    # the rest is upstream's default: init_values_inject 0, with_cffn, add_mamba_feature,
    # use_extra_extractor, no activation checkpointing
    for key in ('init_values_inject', 'with_cffn', 'add_mamba_feature',
                'use_extra_extractor', 'with_cp', 'init_scheme'):
        assert key not in backbone, key
    defaults = inspect.signature(ShuffleMambaAdapter).parameters
    assert (defaults['init_values_inject'].default, defaults['with_cffn'].default,
            defaults['add_mamba_feature'].default,
            defaults['use_extra_extractor'].default) == (0.0, True, True, True)


@pytest.mark.parametrize('size', sorted(UPSTREAM_COCO))
def test_coco_adapter_configs_are_upstreams_item_by_item(size):
    cfg = load_config(f'configs/mask_rcnn/mask-rcnn_shufflemamba-adapter-{size}_fpn_1x_coco.py')
    upstream = dict(UPSTREAM_COMMON, **UPSTREAM_COCO[size])
    assert_backbone_is_upstreams(cfg.model.backbone, upstream)
    neck = cfg.model.neck  # FPN 4 x C -> 256, 5 outputs, SyncBN
    assert (neck.type, list(neck.in_channels), neck.out_channels, neck.num_outs) == (
        'FPN', [upstream['embed_dim']] * 4, 256, 5)
    assert dict(neck.norm_cfg) == dict(type='SyncBN', requires_grad=True)
    optim = cfg.optim_wrapper  # template.py + the size's config
    assert optim.type == 'OptimWrapper' and 'clip_grad' not in optim
    assert dict(optim.optimizer) == dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999),
                                         weight_decay=0.05)
    assert optim.constructor == 'mmshufflemamba.LayerDecayOptimWrapperConstructor'
    assert dict(optim.paramwise_cfg) == dict(layer_decay_rate=0.9, no_decay='ndim')
    warmup, steps = cfg.param_scheduler
    assert (warmup.type, warmup.start_factor, warmup.by_epoch, warmup.begin, warmup.end) == (
        'LinearLR', 0.001, False, 0, 1000)
    assert (steps.type, list(steps.milestones), steps.gamma, steps.end) == (
        'MultiStepLR', [8, 11], 0.1, 12)
    assert cfg.train_cfg.max_epochs == 12 and cfg.train_cfg.val_interval == 1
    assert (cfg.train_dataloader.batch_size, cfg.train_dataloader.num_workers) == (2, 4)
    assert cfg.model.data_preprocessor.pad_size_divisor == 32
    assert cfg.default_hooks.checkpoint.interval == 1  # mmdet's default_runtime


def test_ade20k_adapter_config_is_upstreams_item_by_item():
    cfg = load_config('configs/upernet/upernet_shufflemamba-adapter-b_8xb2-160k_ade20k-512x512.py')
    upstream = dict(UPSTREAM_COMMON, **dict(UPSTREAM_COCO['b'], drop_path_rate=0.2))
    assert_backbone_is_upstreams(cfg.model.backbone, upstream)
    head, aux = cfg.model.decode_head, cfg.model.auxiliary_head
    assert (head.type, list(head.in_index), head.channels, tuple(head.pool_scales)) == (
        'UPerHead', [0, 1, 2, 3], 512, (1, 2, 3, 6))
    assert (aux.type, aux.in_index, aux.channels, aux.loss_decode.loss_weight) == (
        'FCNHead', 3, 256, 0.4)
    assert head.norm_cfg.type == aux.norm_cfg.type == 'SyncBN'
    optim = cfg.optim_wrapper
    assert 'constructor' not in optim  # upstream's layer decay is commented out
    assert optim.optimizer.lr == 6e-5 and optim.optimizer.weight_decay == 0.01
    assert dict(optim.paramwise_cfg.custom_keys) == {
        '.pos_embed': dict(decay_mult=0.0), '.cls_token': dict(decay_mult=0.0),
        'norm': dict(decay_mult=0.0), '.A_log': dict(decay_mult=0.0),
        '.D': dict(decay_mult=0.0)}
    warmup, poly = cfg.param_scheduler
    assert (warmup.start_factor, warmup.end, poly.begin, poly.end, poly.power) == (
        1e-6, 1500, 1500, 160000, 1.0)
    assert dict(cfg.model.test_cfg) == dict(mode='slide', crop_size=(512, 512),
                                            stride=(341, 341))
    assert cfg.train_dataloader.batch_size == 2 and cfg.train_cfg.val_interval == 8000


def upstream_layer_decay(name: str, shape, num_layers: int, base_lr: float, wd: float):
    """(lr, weight decay) of ``MyLayerDecayOptimizerConstructor`` (upstream's
    detection/mmdet_custom): ``get_num_layer_for_vit`` and its no-decay test."""
    num_max_layer = num_layers + 2
    if name in ('backbone.cls_token', 'backbone.mask_token', 'backbone.pos_embed',
                'backbone.visual_embed') or name.startswith('backbone.patch_embed'):
        layer_id = 0
    elif name.startswith('backbone.layers'):
        layer_id = int(name.split('.')[2]) + 1
    else:
        layer_id = num_max_layer - 1
    no_decay = len(shape) == 1 or name.endswith('.bias') or name in (
        'pos_embed', 'cls_token', 'visual_embed')  # unprefixed names: never here
    return base_lr * 0.9**(num_max_layer - layer_id - 1), 0.0 if no_decay else wd


def test_coco_adapter_optimizer_groups_are_upstreams():
    """Every parameter of an adapter Mask R-CNN gets upstream's lr and weight decay."""
    from mmengine.config import ConfigDict
    from mmengine.registry import init_default_scope

    from mmshufflemamba.engine import LayerDecayOptimWrapperConstructor
    from mmshufflemamba.utils import build_model_from_config
    real = load_config('configs/mask_rcnn/mask-rcnn_shufflemamba-adapter-b_fpn_1x_coco.py')
    model, _ = build_model_from_config(
        'configs/mask_rcnn/mask-rcnn_shufflemamba-adapter-toy_fpn_1x_toycoco.py')
    init_default_scope('mmdet')
    wrapper_cfg = ConfigDict(real.optim_wrapper)
    paramwise = wrapper_cfg.pop('paramwise_cfg')
    wrapper_cfg.pop('constructor')
    groups = LayerDecayOptimWrapperConstructor(wrapper_cfg, paramwise).param_groups(model)
    got = {}
    for group in groups:
        for name in group['param_names']:
            got[name] = (group['lr'], group['weight_decay'])
    expected = {name: upstream_layer_decay(name, p.shape, model.backbone.num_layers, 1e-4, 0.05)
                for name, p in model.named_parameters()}
    assert got.keys() == expected.keys()
    wrong = {n: (got[n], expected[n]) for n in got
             if got[n][1] != expected[n][1] or not math.isclose(got[n][0], expected[n][0])}
    assert not wrong, wrong
    # the facts that make upstream's rule differ from this package's default
    assert got['backbone.pos_embed'][1] == 0.05 and got['backbone.layers.0.mixer.A_log'][1] == 0.05
    assert got['backbone.level_embed'] == (1e-4, 0.05)


def test_full_size_adapter_detectors_have_upstreams_parameter_counts():
    """Upstream's detection/model.py notes 103M (middle) and 383M (large) for these
    Mask R-CNNs (built on the meta device: shapes only)."""
    from mmshufflemamba.utils import build_model_from_config
    for size, millions in (('m', 103), ('l', 383)):
        with torch.device('meta'):
            model, _ = build_model_from_config(
                f'configs/mask_rcnn/mask-rcnn_shufflemamba-adapter-{size}_fpn_1x_coco.py')
        count = sum(p.numel() for p in model.parameters()) / 1e6
        assert abs(count - millions) < 0.5, (size, count)


# ------------------------------------------------------- the toy adapter models learn
TOY_DET = 'configs/mask_rcnn/mask-rcnn_shufflemamba-adapter-toy_fpn_1x_toycoco.py'
TOY_SEG = 'configs/upernet/upernet_shufflemamba-adapter-toy_1xb8-300_toyade-64x64.py'


def train_toy(tmp_path, config: str, overrides: str, iters: int):
    """tools/train.py for ``iters`` iterations, validating once, at the end: (the written
    config, the trained checkpoint, the training records, the last validation's metrics)."""
    from helpers import logged_scalars, run_tool, write_child_config
    config = write_child_config(
        tmp_path / 'toy.py', config, overrides +
        f"train_cfg = dict(max_iters={iters}, val_interval={iters})\n"
        f"default_hooks = dict(checkpoint=dict(interval={iters}))\n")
    work_dir = str(tmp_path / 'work')
    run_tool('tools/train.py', config, '--work-dir', work_dir, timeout=1800)
    (records, ) = logged_scalars(work_dir)
    validations = [r for r in records if 'loss' not in r and 'lr' not in r]
    assert validations and validations[-1]['step'] == iters, records[-3:]
    return (config, f'{work_dir}/iter_{iters}.pth', [r for r in records if 'loss' in r],
            validations[-1])


@pytest.mark.slow
def test_toy_adapter_mask_rcnn_learns_to_detect(tmp_path):
    """The adapter detector trains through tools/train.py and detects (its validation at
    the end; tools/test.py on a Mask R-CNN checkpoint is test_demo's and test_stability's).

    Box / mask mAP 0.710 / 0.745 after these 100 iterations in one run (the plain toy
    detector's demo: 0.785 / 0.785 after its 150). Before the
    adapter's maps were made contiguous (test_dense_outputs_are_contiguous_...), its RoI
    heads read scrambled features and it stayed near 0.
    """
    from helpers import data_overrides

    from mmshufflemamba.datasets import make_toy_coco
    data = str(tmp_path / 'toy_coco') + '/'
    make_toy_coco(data)
    _, _, losses, after = train_toy(
        tmp_path, TOY_DET, data_overrides(data) +
        "val_evaluator = dict(ann_file=data_root + 'annotations/instances_val2017.json')\n"
        'test_evaluator = val_evaluator\n', iters=100)
    first, last = losses[0], losses[-1]
    print('losses', [(r['iter'], round(r['loss'], 3)) for r in losses], '\ntrained', after)
    assert last['loss'] < 0.3 * first['loss'], (first, last)
    assert after['coco/bbox_mAP'] > 0.3 and after['coco/segm_mAP'] > 0.25, after


@pytest.mark.slow
def test_toy_adapter_upernet_learns_and_its_checkpoint_is_upstreams_layout(tmp_path):
    from helpers import data_overrides, printed_metrics, run_tool, save_untrained_checkpoints

    from mmshufflemamba.datasets import make_toy_ade20k
    data = str(tmp_path / 'toy_ade')
    make_toy_ade20k(data)
    config, trained, _, after = train_toy(tmp_path, TOY_SEG, data_overrides(data), iters=300)
    untrained = str(tmp_path / 'untrained.pth')
    save_untrained_checkpoints(config, untrained)
    before = printed_metrics(run_tool('tools/test.py', config, untrained, '--work-dir',
                                      str(tmp_path / 'before')))
    print(f"untrained mIoU {before['mIoU']:.2f}, trained {after['mIoU']:.2f}")
    assert after['mIoU'] > 50.0 and after['mIoU'] > before['mIoU'] + 30.0, (before, after)

    # the backbone's keys are upstream's MM_VSSM_ADT keys (BN here, as upstream's SyncBN;
    # the toy's blocks are RMSNorm, upstream's rms_norm=True)
    state = torch.load(trained, map_location='cpu', weights_only=True)['state_dict']
    backbone = sorted(k[len('backbone.'):] for k in state if k.startswith('backbone.'))
    assert backbone == sorted(upstream_state_keys(DEPTH, rms_norm=True))
    # a dense checkpoint without the adapter's modules (e.g. upstream's plain MM_VSSM) is
    # refused, and the message names what is missing
    plain = str(tmp_path / 'no_adapter.pth')
    torch.save({'state_dict': {k: v for k, v in state.items()
                               if not k.startswith(('backbone.spm.', 'backbone.interactions.'))},
                'meta': {}}, plain)
    proc = run_tool('tools/test.py', config, plain, '--work-dir', str(tmp_path / 'refused'),
                    check=False)
    assert proc.returncode != 0 and 'does not fit this model' in proc.stderr, proc.stderr[-2000:]
    assert 'backbone.spm.*' in proc.stderr and 'backbone.interactions.*' in proc.stderr
