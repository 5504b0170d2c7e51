"""Converted published weights compute exactly what upstream computes.

The reference here is a transcription of upstream's forward passes, written from their
rules and *not* from this package's code: its own token ordering (Vim's middle class
token, ShuffleMamba's head class token, Mamba-Reg's ``get_cls_idx``), its own token-major
mixer over the textbook scan loop, its own norms and heads, all in float64. Our side is
what a user runs: ``reference_to_mmpretrain`` on an upstream-layout state dict, loaded
strictly into an mmpretrain ``ImageClassifier`` with our backbone.

Facts read from upstream and held here (hustvl/Vim ``vim/models_mamba.py``,
wangf3014/Mamba-Reg ``models_mamba.py`` + ``utils.get_cls_idx``, huangzizheng01/
ShuffleMamba ``models_shuffle.py``/``models_reg.py``):

* register indices for 196 patches / 12 registers: 15, 31, ..., 191; 196 / 16: 11, 23,
  ..., 191; 64 / 12 (the 128 px stage): 4, 9, ..., 59;
* Vim's class token sits at ``M // 2`` (98 of 196; 364 of 729 for the stride-8 models, a
  27x27 grid at 224 px, ``pos_embed`` of 730 slots);
* ``cls_reduce``: tiny 1, small 2, base 4, large 8 (``k`` 12, 12, 12, 16).
"""
import math
from typing import Dict

import pytest
import torch
import torch.nn.functional as F

from helpers import token_positions

from mmshufflemamba.models.utils import TokenLayout, reference_to_mmpretrain

C, DEPTH, N, CLASSES = 32, 2, 16, 7  # width, depth, d_state, classes (small on purpose)

REGISTER_FACTS = {  # (patches, registers) -> indices, as printed by upstream get_cls_idx
    (196, 12): list(range(15, 192, 16)),
    (196, 16): list(range(11, 192, 12)),
    (64, 12): list(range(4, 60, 5)),
}


# ------------------------------------------------------------------ upstream, transcribed
def upstream_register_order(num_patches: int, k: int):
    """Mamba-Reg ``get_cls_idx``: ``k`` blocks of ``L = M // (k + 1)`` patch ids, each
    followed by one register id (``M + j``), then the remaining patch ids; and the
    positions of the registers in that sequence."""
    L = num_patches // (k + 1)
    order = []
    for j in range(k):
        order += list(range(j * L, (j + 1) * L)) + [num_patches + j]
    order += list(range(k * L, num_patches))
    positions = [i for i, token in enumerate(order) if token >= num_patches]
    return torch.tensor(order), positions


def upstream_norm(x, weight, bias, eps=1e-5):
    if bias is None:  # mamba_ssm RMSNorm
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight
    return F.layer_norm(x, x.shape[-1:], weight, bias, eps)


def upstream_mixer(p: Dict[str, torch.Tensor], hidden: torch.Tensor) -> torch.Tensor:
    """mamba_ssm ``Mamba`` with ``biscan`` (Vim "v2", divide-out), token-major, textbook."""
    length = hidden.shape[1]
    x, z = (hidden @ p['in_proj.weight'].t()).chunk(2, dim=-1)  # (B, L, d_inner) each

    def direction(x, z, sfx):
        w = p[f'conv1d{sfx}.weight']
        x = F.conv1d(x.transpose(1, 2), w, p[f'conv1d{sfx}.bias'], padding=w.shape[-1] - 1,
                     groups=w.shape[0])[..., :length]
        x = F.silu(x).transpose(1, 2)
        A = -torch.exp(p['A_log' if not sfx else 'A_b_log'])  # (d_inner, N)
        rank = p[f'dt_proj{sfx}.weight'].shape[1]
        dt, Bs, Cs = (x @ p[f'x_proj{sfx}.weight'].t()).split([rank, A.shape[1], A.shape[1]],
                                                              dim=-1)
        dt = F.softplus(dt @ p[f'dt_proj{sfx}.weight'].t() + p[f'dt_proj{sfx}.bias'])
        h = x.new_zeros(x.shape[0], x.shape[2], A.shape[1])
        ys = []
        for t in range(length):
            h = torch.exp(dt[:, t, :, None] * A) * h \
                + (dt[:, t] * x[:, t])[:, :, None] * Bs[:, t, None, :]
            ys.append((h * Cs[:, t, None, :]).sum(-1) + p[f'D{sfx}'] * x[:, t])
        return torch.stack(ys, dim=1) * F.silu(z)

    y = (direction(x, z, '') + direction(x.flip(1), z.flip(1), '_b').flip(1)) / 2
    return y @ p['out_proj.weight'].t()


def upstream_logits(ref: Dict[str, torch.Tensor], x: torch.Tensor, family: str,
                    stride: int = 16, register_order=upstream_register_order):
    """The upstream forward in eval mode: embedding, Add->Norm->Mixer blocks, norm_f, head."""
    tokens = F.conv2d(x, ref['patch_embed.proj.weight'], ref['patch_embed.proj.bias'],
                      stride=stride).flatten(2).transpose(1, 2)  # (B, M, C)
    batch, M, _ = tokens.shape
    if family == 'vim':  # class token inserted at M // 2, then pos_embed over all
        cls = ref['cls_token'].expand(batch, -1, -1)
        tokens = torch.cat([tokens[:, :M // 2], cls, tokens[:, M // 2:]], dim=1)
        tokens = tokens + ref['pos_embed']
        readout = [M // 2]
    elif family == 'shufflemamba':  # class token first, then pos_embed over all
        tokens = torch.cat([ref['cls_token'].expand(batch, -1, -1), tokens], dim=1)
        tokens = tokens + ref['pos_embed']
        readout = [0]
    else:  # mambar: pos_embed on patches, registers appended, then reordered
        k = ref['cls_token'].shape[1]
        registers = ref['cls_token'].expand(batch, -1, -1) + ref['pos_embed_cls']
        order, readout = register_order(M, k)
        tokens = torch.cat([tokens + ref['pos_embed'], registers], dim=1)[:, order]

    residual, hidden = None, tokens
    for i in range(DEPTH):
        p = {k[len(f'layers.{i}.mixer.'):]: v for k, v in ref.items()
             if k.startswith(f'layers.{i}.mixer.')}
        residual = hidden if residual is None else residual + hidden
        normed = upstream_norm(residual, ref[f'layers.{i}.norm.weight'],
                               ref.get(f'layers.{i}.norm.bias'))
        hidden = upstream_mixer(p, normed)
    out = upstream_norm(residual + hidden, ref['norm_f.weight'], ref.get('norm_f.bias'))

    feats = out[:, readout]  # (B, k, C) or (B, 1, C)
    if 'neck.weight' in ref:
        feats = (feats @ ref['neck.weight'].t()).flatten(1)
        feats = upstream_norm(feats, ref['norm_neck.weight'], ref.get('norm_neck.bias'))
    else:
        feats = feats.flatten(1)
    return feats @ ref['head.weight'].t() + ref['head.bias']


# --------------------------------------------------------------- upstream-layout weights
def upstream_state(family: str, grid: int, registers: int = 0, reduction: int = 1,
                   layer_norm: bool = False, seed: int = 0) -> Dict[str, torch.Tensor]:
    """Random float64 weights under upstream's key names and shapes."""
    g = torch.Generator().manual_seed(seed)
    inner, rank, M = 2 * C, math.ceil(C / 16), grid * grid

    def rnd(*shape, scale=None):
        fan_in = shape[-1] if len(shape) > 1 else 1
        scale = scale if scale is not None else fan_in ** -0.5
        return torch.randn(*shape, generator=g, dtype=torch.float64) * scale

    s = {'patch_embed.proj.weight': rnd(C, 3, 16, 16, scale=0.02),
         'patch_embed.proj.bias': rnd(C, scale=0.02),
         'norm_f.weight': 1 + rnd(C, scale=0.1)}
    if family == 'mambar':
        s.update(pos_embed=rnd(1, M, C, scale=0.1), cls_token=rnd(1, registers, C, scale=0.5),
                 pos_embed_cls=rnd(1, registers, C, scale=0.1))
        features = registers * C // reduction
        if reduction > 1:
            s['neck.weight'] = rnd(C // reduction, C)
            s['norm_neck.weight'] = 1 + rnd(features, scale=0.1)
    else:
        s.update(pos_embed=rnd(1, M + 1, C, scale=0.1), cls_token=rnd(1, 1, C, scale=0.5))
        features = C
    s['head.weight'] = rnd(CLASSES, features)
    s['head.bias'] = rnd(CLASSES, scale=0.1)
    if layer_norm:
        s['norm_f.bias'] = rnd(C, scale=0.1)
    for i in range(DEPTH):
        p = f'layers.{i}.'
        s[p + 'norm.weight'] = 1 + rnd(C, scale=0.1)
        if layer_norm:
            s[p + 'norm.bias'] = rnd(C, scale=0.1)
        s[p + 'mixer.in_proj.weight'] = rnd(2 * inner, C)
        s[p + 'mixer.out_proj.weight'] = rnd(C, inner)
        for sfx, a_name in (('', 'A_log'), ('_b', 'A_b_log')):
            s[f'{p}mixer.conv1d{sfx}.weight'] = rnd(inner, 1, 4, scale=0.5)
            s[f'{p}mixer.conv1d{sfx}.bias'] = rnd(inner, scale=0.1)
            s[f'{p}mixer.x_proj{sfx}.weight'] = rnd(rank + 2 * N, inner)
            s[f'{p}mixer.dt_proj{sfx}.weight'] = rnd(inner, rank)
            s[f'{p}mixer.dt_proj{sfx}.bias'] = -4 + rnd(inner, scale=1.0)  # softplus ~ 0.02
            s[f'{p}mixer.{a_name}'] = torch.log(torch.arange(1, N + 1, dtype=torch.float64)
                                                ).repeat(inner, 1) + rnd(inner, N, scale=0.1)
            s[f'{p}mixer.D{sfx}'] = 1 + rnd(inner, scale=0.1)
    return s


# ------------------------------------------------------------------------------ ours
def our_classifier(backbone: dict, head: dict):
    from mmengine.registry import init_default_scope
    from mmpretrain.registry import MODELS
    init_default_scope('mmpretrain')
    return MODELS.build(dict(
        type='ImageClassifier',
        backbone=dict(type='mmshufflemamba.ShuffleMamba', arch=dict(embed_dims=C,
                      num_layers=DEPTH), patch_size=16, **backbone),
        head=dict(num_classes=CLASSES, in_channels=C, **head)))


FAMILIES = {
    # name: (upstream state kwargs, image size, upstream stride, our backbone, our head)
    'vim_midclstok': (dict(family='vim', grid=14), 224, 16,
                      dict(img_size=224, cls_token='middle'), dict(type='LinearClsHead')),
    'vim_stride8_midclstok': (dict(family='vim', grid=27), 224, 8,
                              dict(img_size=224, patch_stride=8, cls_token='middle'),
                              dict(type='LinearClsHead')),
    'shufflemamba_headcls': (dict(family='shufflemamba', grid=14), 224, 16,
                             dict(img_size=224, cls_token='head'), dict(type='LinearClsHead')),
    'shufflemamba_middle_layernorm': (dict(family='shufflemamba', grid=14, layer_norm=True),
                                      224, 16, dict(img_size=224, cls_token='head',
                                                    norm_type='LN'),
                                      dict(type='LinearClsHead')),
    'mambar_12reg_reduce1': (dict(family='mambar', grid=14, registers=12), 224, 16,
                             dict(img_size=224, cls_token=None, num_registers=12,
                                  out_type='registers'),
                             dict(type='mmshufflemamba.RegisterClsHead', num_registers=12)),
    'mambar_12reg_reduce4': (dict(family='mambar', grid=14, registers=12, reduction=4), 224,
                             16, dict(img_size=224, cls_token=None, num_registers=12,
                                      out_type='registers'),
                             dict(type='mmshufflemamba.RegisterClsHead', num_registers=12,
                                  reduction=4)),
    'mambar_16reg_reduce8': (dict(family='mambar', grid=14, registers=16, reduction=8), 224,
                             16, dict(img_size=224, cls_token=None, num_registers=16,
                                      out_type='registers'),
                             dict(type='mmshufflemamba.RegisterClsHead', num_registers=16,
                                  reduction=8)),
    'mambar_12reg_reduce2_128px': (dict(family='mambar', grid=8, registers=12, reduction=2),
                                   128, 16, dict(img_size=128, cls_token=None,
                                                 num_registers=12, out_type='registers'),
                                   dict(type='mmshufflemamba.RegisterClsHead',
                                        num_registers=12, reduction=2)),
}


def both_logits(name: str):
    state_kwargs, size, stride, backbone, head = FAMILIES[name]
    ref = upstream_state(**state_kwargs)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1),
                    dtype=torch.float64)
    model = our_classifier(backbone, head).double().eval()
    model.load_state_dict(reference_to_mmpretrain(ref), strict=True)
    with torch.no_grad():
        ours = model(x, mode='tensor')
        theirs = upstream_logits(ref, x, state_kwargs['family'], stride)
    return ours, theirs, (ref, x, state_kwargs['family'], stride)


@pytest.mark.parametrize('name', sorted(FAMILIES))
def test_converted_weights_give_upstream_logits(name):
    ours, theirs, _ = both_logits(name)
    assert theirs.abs().max() > 0.1  # the comparison is not between two near-zero tensors
    diff = (ours - theirs).abs().max().item()
    print(f'{name}: max |logit difference| = {diff:.3g} (logits up to '
          f'{theirs.abs().max().item():.3g})')
    assert diff < 1e-9


def test_a_spread_register_layout_would_be_caught():
    """The transcription is sensitive to the layout: the evenly spread layout this package
    used before (register j at int((j + 0.5) * T / k)) gives logits far from upstream's."""
    _, theirs, (ref, x, family, stride) = both_logits('mambar_12reg_reduce4')

    def spread(num_patches, k):
        total = num_patches + k
        at = {int((j + 0.5) * total / k): j for j in range(k)}
        patches = iter(range(num_patches))
        order = [num_patches + at[i] if i in at else next(patches) for i in range(total)]
        return torch.tensor(order), sorted(at)

    with torch.no_grad():
        wrong = upstream_logits(ref, x, family, stride, register_order=spread)
    assert (wrong - theirs).abs().max() > 1e-2


@pytest.mark.parametrize('patches,registers', sorted(REGISTER_FACTS))
def test_register_indices_are_upstreams(patches, registers):
    facts = REGISTER_FACTS[(patches, registers)]
    _, transcribed = upstream_register_order(patches, registers)
    _, register_index, order = token_positions(TokenLayout(patches, None, registers))
    print(f'{patches} patches / {registers} registers -> {register_index.tolist()}')
    assert transcribed == facts
    assert register_index.tolist() == facts
    assert order.tolist() == upstream_register_order(patches, registers)[0].tolist()


def test_class_token_positions_are_upstreams():
    assert TokenLayout(196, 'middle').cls_index == 98
    assert TokenLayout(729, 'middle').cls_index == 364
    assert TokenLayout(196, 'head').cls_index == 0
    assert token_positions(TokenLayout(196, None))[2] is None


def test_stride8_models_have_upstreams_grid():
    from mmshufflemamba.models import ShuffleMamba
    for arch, width in (('tiny-stride8', 192), ('small-stride8', 384)):
        model = ShuffleMamba(arch=arch, cls_token='middle')
        assert model.patch_resolution == (27, 27)
        assert model.pos_embed.shape == (1, 730, width)  # Vim-T+/S+ checkpoints' shape


def test_mambar_param_counts_follow_cls_reduce():
    """Reg heads: features = k * C / r with (k, r) = (12, 1), (12, 2), (12, 4), (16, 8)."""
    from mmshufflemamba.models import RegisterClsHead
    for width, k, r in ((192, 12, 1), (384, 12, 2), (768, 12, 4), (1024, 16, 8)):
        head = RegisterClsHead(1000, width, k, reduction=r)
        assert head.fc.in_features == width * (k // r)  # upstream's head input size
        neck = 0 if r == 1 else width * width // r + k * width // r
        assert sum(p.numel() for p in head.parameters()) == neck + head.fc.in_features * \
            1000 + 1000


def test_conversion_misses_nothing_upstream_has():
    for name, (state_kwargs, *_rest, backbone, head) in FAMILIES.items():
        ref = upstream_state(**state_kwargs)
        converted = reference_to_mmpretrain(ref)
        assert len(converted) == len(ref), name
        model = our_classifier(backbone, head)
        assert set(model.state_dict()) == set(converted), name


def upstream_segmentation_features(ref, x, out_indices):
    """ShuffleMamba's segmentation backbone (``models_openmm.Backbone_VideoMamba``): the
    class slot (index 0) dropped from ``pos_embed`` at load, the 14x14 patch embedding
    resized bicubically to the input's grid at every forward, intermediate outputs taken
    from the *mixer output* of a block, the last one after ``norm_f``; NCHW maps."""
    tokens = F.conv2d(x, ref['patch_embed.proj.weight'], ref['patch_embed.proj.bias'],
                      stride=16)
    batch, _, h, w = tokens.shape
    pos = ref['pos_embed'][:, 1:]
    side = math.isqrt(pos.shape[1])
    pos = F.interpolate(pos.reshape(1, side, side, C).permute(0, 3, 1, 2), size=(h, w),
                        mode='bicubic', align_corners=False).flatten(2).transpose(1, 2)
    hidden, residual, outs = tokens.flatten(2).transpose(1, 2) + pos, None, []
    for i in range(DEPTH):
        p = {k[len(f'layers.{i}.mixer.'):]: v for k, v in ref.items()
             if k.startswith(f'layers.{i}.mixer.')}
        residual = hidden if residual is None else residual + hidden
        hidden = upstream_mixer(p, upstream_norm(residual, ref[f'layers.{i}.norm.weight'],
                                                 ref.get(f'layers.{i}.norm.bias')))
        if i == DEPTH - 1:
            hidden = upstream_norm(residual + hidden, ref['norm_f.weight'],
                                   ref.get('norm_f.bias'))
        if i in out_indices:
            outs.append(hidden.transpose(1, 2).reshape(batch, C, h, w))
    return outs


def test_paper_segmentation_backbone_is_upstreams():
    """``intermediate_output='mixer'`` with the paper configs' settings (no pyramid,
    ``img_size=224`` so the position embedding is resized at run time, as upstream)."""
    from mmshufflemamba.models import ShuffleMamba
    from mmshufflemamba.models.utils import fit_checkpoint
    ref = upstream_state('shufflemamba', grid=14, layer_norm=True)
    backbone = ShuffleMamba(arch=dict(embed_dims=C, num_layers=DEPTH), img_size=224,
                            cls_token=None, out_type='featmap', out_indices=(0, 1),
                            intermediate_output='mixer', norm_type='LN').double().eval()
    state = {k[len('backbone.'):]: v for k, v in reference_to_mmpretrain(ref).items()
             if k.startswith('backbone.')}
    _, report = fit_checkpoint(state, backbone.fit_target())
    backbone.load_state_dict(state, strict=True)
    assert report['dropped'] == ['cls_token', 'pos_embed[0] (class-token slot, '
                                               "ckpt_cls_token='head')"]
    x = torch.randn(1, 3, 256, 288, generator=torch.Generator().manual_seed(2),
                    dtype=torch.float64)
    with torch.no_grad():
        ours = backbone(x)
        theirs = upstream_segmentation_features(ref, x, (0, 1))
    assert [o.shape for o in ours] == [(1, C, 16, 18)] * 2
    for a, b in zip(ours, theirs):
        assert (a - b).abs().max() < 1e-9
    # the default returns the residual stream instead: a different tensor
    residual = ShuffleMamba(arch=dict(embed_dims=C, num_layers=DEPTH), img_size=224,
                            cls_token=None, out_type='featmap', out_indices=(0, 1),
                            norm_type='LN').double().eval()
    residual.load_state_dict(state, strict=True)
    with torch.no_grad():
        assert (residual(x)[0] - theirs[0]).abs().max() > 1e-2
