"""Reference checkpoints (Vim, ShuffleMamba, Mamba-Reg) <-> mmpretrain checkpoints."""
import math

import pytest
import torch
from helpers import run_tool

from mmshufflemamba.models.utils import mmpretrain_to_reference, reference_to_mmpretrain

C, DEPTH, N, GRID, CLASSES = 32, 2, 4, 2, 5  # width, depth, d_state, patch grid side


def reference_state(layout, registers=0, reduction=1, seed=0):
    """Keys and shapes of the reference layout (DESIGN.md 3), random values."""
    g = torch.Generator().manual_seed(seed)
    R, M, inner = math.ceil(C / 16), GRID * GRID, 2 * C
    shapes = {'patch_embed.proj.weight': (C, 3, 16, 16), 'patch_embed.proj.bias': (C, ),
              'norm_f.weight': (C, )}
    if registers:
        shapes.update({'pos_embed': (1, M, C), 'cls_token': (1, registers, C),
                       'pos_embed_cls': (1, registers, C)})
        features = registers * C // reduction
        if reduction > 1:
            shapes.update({'neck.weight': (C // reduction, C),
                           'norm_neck.weight': (features, )})
    else:
        shapes.update({'pos_embed': (1, M + 1, C), 'cls_token': (1, 1, C)})
        features = C
    shapes.update({'head.weight': (CLASSES, features), 'head.bias': (CLASSES, )})
    for i in range(DEPTH):
        p = f'layers.{i}.'
        shapes[p + 'norm.weight'] = (C, )
        shapes[p + 'mixer.in_proj.weight'] = (2 * inner, C)
        shapes[p + 'mixer.out_proj.weight'] = (C, inner)
        for s in ('', '_b'):
            shapes.update({
                f'{p}mixer.conv1d{s}.weight': (inner, 1, 4),
                f'{p}mixer.conv1d{s}.bias': (inner, ),
                f'{p}mixer.x_proj{s}.weight': (R + 2 * N, inner),
                f'{p}mixer.dt_proj{s}.weight': (inner, R),
                f'{p}mixer.dt_proj{s}.bias': (inner, ),
                f'{p}mixer.{"A_log" if not s else "A_b_log"}': (inner, N),
                f'{p}mixer.D{s}': (inner, )})
    state = {k: torch.randn(*v, generator=g) * 0.1 for k, v in shapes.items()}
    for k in state:
        if k.endswith(('A_log', 'A_b_log')):
            state[k] = torch.log(torch.arange(1, N + 1).float()).repeat(inner, 1)
    return state


LAYOUTS = {  # name -> reference kwargs, backbone cfg, head cfg
    'vim_middle': (dict(layout='middle'), dict(cls_token='middle', out_type='cls_token'),
                   dict(type='LinearClsHead', in_channels=C)),
    'shufflemamba_head': (dict(layout='head'), dict(cls_token='head', out_type='cls_token'),
                          dict(type='LinearClsHead', in_channels=C)),
    'mambar_reduced': (dict(layout=None, registers=4, reduction=4),
                       dict(cls_token=None, num_registers=4, out_type='registers'),
                       dict(type='mmshufflemamba.RegisterClsHead', in_channels=C,
                            num_registers=4, reduction=4)),
    'mambar_plain': (dict(layout=None, registers=3),
                     dict(cls_token=None, num_registers=3, out_type='registers'),
                     dict(type='mmshufflemamba.RegisterClsHead', in_channels=C,
                          num_registers=3)),
}


def build_classifier(backbone_cfg, head_cfg):
    from mmengine.registry import init_default_scope
    from mmpretrain.registry import MODELS
    init_default_scope('mmpretrain')
    return MODELS.build(dict(
        type='ImageClassifier',
        backbone=dict(type='mmshufflemamba.ShuffleMamba', arch=dict(embed_dims=C,
                      num_layers=DEPTH), img_size=16 * GRID, patch_size=16,
                      mixer_cfg=dict(d_state=N), **backbone_cfg),
        head=dict(num_classes=CLASSES, **head_cfg))).eval()


def direct_logits(reference, backbone_cfg, x):
    """Our backbone fed the reference tensors by hand, the head written out here."""
    from mmshufflemamba.models import ShuffleMamba
    backbone = ShuffleMamba(arch=dict(embed_dims=C, num_layers=DEPTH), img_size=16 * GRID,
                            patch_size=16, mixer_cfg=dict(d_state=N), **backbone_cfg).eval()
    registers = backbone_cfg.get('num_registers', 0)
    state = {k: v for k, v in reference.items()
             if not k.startswith(('head.', 'neck.', 'norm_neck.'))}
    if registers:
        state['register_tokens'] = state.pop('cls_token')
        state['pos_embed_reg'] = state.pop('pos_embed_cls')
    backbone.load_state_dict(state, strict=True)
    feats = backbone(x)[-1]
    if registers:
        if 'neck.weight' in reference:
            feats = feats @ reference['neck.weight'].t()
            feats = feats.flatten(1)
            feats = feats * torch.rsqrt(feats.pow(2).mean(-1, keepdim=True) + 1e-5) \
                * reference['norm_neck.weight']
        else:
            feats = feats.flatten(1)
    return feats @ reference['head.weight'].t() + reference['head.bias']


@pytest.mark.parametrize('name', sorted(LAYOUTS))
def test_converted_reference_gives_the_same_logits(name):
    ref_kwargs, backbone_cfg, head_cfg = LAYOUTS[name]
    reference = reference_state(**ref_kwargs)
    converted = reference_to_mmpretrain(reference)
    model = build_classifier(backbone_cfg, head_cfg)
    model.load_state_dict(converted, strict=True)
    x = torch.randn(2, 3, 16 * GRID, 16 * GRID)
    with torch.no_grad():
        logits = model(x, mode='tensor')
        expected = direct_logits(reference, backbone_cfg, x)
    torch.testing.assert_close(logits, expected)


@pytest.mark.parametrize('name', sorted(LAYOUTS))
def test_round_trip_is_identity(name):
    reference = reference_state(**LAYOUTS[name][0])
    back = mmpretrain_to_reference(reference_to_mmpretrain(reference))
    assert list(back) == list(reference)
    assert all(back[k] is reference[k] for k in reference)


def test_unknown_keys_are_errors():
    reference = reference_state('head')
    reference['dist_head.weight'] = torch.zeros(1)
    with pytest.raises(KeyError, match='dist_head.weight'):
        reference_to_mmpretrain(reference)
    with pytest.raises(KeyError, match='neck.foo'):
        mmpretrain_to_reference({'neck.foo': torch.zeros(1)})


def test_converter_cli_reads_model_or_model_ema(tmp_path):
    model, ema = reference_state('head', seed=0), reference_state('head', seed=1)
    src = tmp_path / 'vim_t_midclstok.pth'
    torch.save({'model': model, 'model_ema': ema, 'epoch': 3}, str(src))
    for flag, expected in (([], model), (['--ema'], ema)):
        dst = tmp_path / 'mm.pth'
        proc = run_tool('tools/model_converters/reference2mmpretrain.py', str(src), str(dst),
                        *flag)
        assert 'tensors' in proc.stdout
        state = torch.load(str(dst))['state_dict']  # weights_only: our output is plain
        torch.testing.assert_close(state['backbone.pos_embed'], expected['pos_embed'])
    back = tmp_path / 'ref.pth'
    run_tool('tools/model_converters/mmpretrain2reference.py', str(dst), str(back))
    exported = torch.load(str(back))['model']
    assert set(exported) == set(ema)
    assert all(torch.equal(exported[k], ema[k]) for k in ema)
