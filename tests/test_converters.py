"""Reference checkpoints (Vim, ShuffleMamba, Mamba-Reg) <-> mmpretrain checkpoint keys."""
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


# reference kwargs of each layout; that converted weights compute upstream's logits is
# tested in test_upstream_parity.py against a transcription of upstream's forward
LAYOUTS = {
    'vim_middle': dict(layout='middle'),
    'shufflemamba_head': dict(layout='head'),
    'mambar_reduced': dict(layout=None, registers=4, reduction=4),
    'mambar_plain': dict(layout=None, registers=3),
}


@pytest.mark.parametrize('name', sorted(LAYOUTS))
def test_round_trip_is_identity(name):
    reference = reference_state(**LAYOUTS[name])
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
        assert 'pos_embed: 2x2 patch grid (+1 class-token slot); with patch 16 that is ' \
            'stride 16 at 32 px' in proc.stdout
        assert "cls_token='middle' for Vim" in proc.stdout
        state = torch.load(str(dst))['state_dict']  # weights_only: our output is plain
        torch.testing.assert_close(state['backbone.pos_embed'], expected['pos_embed'])
    # a converted file holds one set of weights (no ema_state_dict): exported to 'model',
    # and the tool says so
    back = tmp_path / 'ref.pth'
    proc = run_tool('tools/model_converters/mmpretrain2reference.py', str(dst), str(back))
    assert 'no EMA weights in the checkpoint (no ema_state_dict): its state_dict -> model, ' \
        'no model_ema written (these weights were converted from a model_ema entry)' \
        in proc.stdout
    exported = torch.load(str(back))
    assert list(exported) == ['model']
    assert set(exported['model']) == set(ema)
    assert all(torch.equal(exported['model'][k], ema[k]) for k in ema)


def reference_key(key):
    """The reference name of an mmpretrain key of a class-token classifier (LinearClsHead),
    written out here independently of the converter."""
    if key.startswith('backbone.'):
        return key[len('backbone.'):]
    assert key.startswith('head.fc.'), key
    return 'head.' + key[len('head.fc.'):]


def test_export_puts_raw_weights_in_model_and_ema_weights_in_model_ema(tmp_path):
    """An mmengine checkpoint written with an EMA hook holds the EMA weights as state_dict
    and the raw ones as ema_state_dict['module.' + key] (EMAHook.before_save_checkpoint
    swaps them). Upstream's checkpoints hold the raw weights as 'model' and the EMA ones
    as 'model_ema': the export undoes the swap, and the converter reads them back."""
    from mmengine.hooks import EMAHook
    from mmengine.model import ExponentialMovingAverage
    from mmengine.registry import init_default_scope
    from mmpretrain.registry import MODELS
    init_default_scope('mmpretrain')
    torch.manual_seed(0)
    model = MODELS.build(dict(
        type='ImageClassifier',
        backbone=dict(type='mmshufflemamba.ShuffleMamba', arch=dict(embed_dims=C,
                      num_layers=DEPTH), img_size=16 * GRID, cls_token='head',
                      out_type='cls_token', mixer_cfg=dict(d_state=N)),
        head=dict(type='LinearClsHead', num_classes=CLASSES, in_channels=C)))
    hook = EMAHook(momentum=0.5)
    hook.ema_model = ExponentialMovingAverage(model, momentum=0.5)
    hook.ema_model.update_parameters(model)  # step 0 copies the model
    with torch.no_grad():
        for param in model.parameters():
            param.add_(1.0)
    hook.ema_model.update_parameters(model)  # ema = raw - 0.5
    # what Runner.save_checkpoint saves: the model's state dict, then the hook's swap
    ckpt = {'meta': {}, 'state_dict': dict(model.state_dict())}
    hook.before_save_checkpoint(None, ckpt)
    src, dst = tmp_path / 'iter_2.pth', tmp_path / 'reference.pth'
    torch.save(ckpt, str(src))
    proc = run_tool('tools/model_converters/mmpretrain2reference.py', str(src), str(dst))
    assert 'raw weights (ema_state_dict) -> model, EMA weights (state_dict) -> model_ema' \
        in proc.stdout
    exported = torch.load(str(dst))
    assert sorted(exported) == ['model', 'model_ema']
    saved, saved_raw = ckpt['state_dict'], ckpt['ema_state_dict']
    assert set(exported['model']) == set(exported['model_ema']) == {
        reference_key(k) for k in saved}
    for key, ema in saved.items():  # the checkpoint's own tensors, by value
        raw = saved_raw['module.' + key]
        assert torch.equal(exported['model'][reference_key(key)], raw), key
        assert torch.equal(exported['model_ema'][reference_key(key)], ema), key
        assert torch.equal(raw, model.state_dict()[key]), key  # the raw weights are raw
        assert torch.allclose(ema, raw - 0.5), key  # and the average differs from them

    # back: model (default) -> the raw weights, --ema -> the EMA weights (the checkpoint's
    # state_dict, what it tests as)
    for flag, expected in (([], {k: saved_raw['module.' + k] for k in saved}),
                           (['--ema'], saved)):
        back = tmp_path / 'back.pth'
        run_tool('tools/model_converters/reference2mmpretrain.py', str(dst), str(back), *flag)
        state = torch.load(str(back))['state_dict']
        assert set(state) == set(expected)
        assert all(torch.equal(state[k], expected[k]) for k in expected), flag

    # (a checkpoint without ema_state_dict exports to 'model' only: the test above)
    # upstream's 'model_ema': None (trained without --model-ema) has nothing for --ema
    torch.save({'model': exported['model'], 'model_ema': None}, str(src))
    refused = run_tool('tools/model_converters/reference2mmpretrain.py', str(src),
                       str(tmp_path / 'x.pth'), '--ema', check=False)
    assert refused.returncode != 0 and 'has no EMA weights: model_ema is None' in \
        refused.stderr


def test_rmsnorm_to_layernorm_reproduces_upstreams_segmentation_load(tmp_path):
    """Upstream's LayerNorm segmentation backbones load RMSNorm checkpoints with
    strict=False: LayerNorm weights = the RMSNorm weights, biases at LayerNorm's zero
    init. The converter flag writes exactly that, and our LayerNorm backbone takes it."""
    from mmshufflemamba.models import ShuffleMamba
    reference = reference_state('head')
    src = tmp_path / 'rms.pth'
    torch.save({'model': reference}, str(src))
    dst = tmp_path / 'ln.pth'
    proc = run_tool('tools/model_converters/reference2mmpretrain.py', str(src), str(dst),
                    '--rmsnorm-to-layernorm')
    assert f'{DEPTH + 1} norms written as LayerNorm' in proc.stdout
    state = torch.load(str(dst))['state_dict']
    backbone = {k[len('backbone.'):]: v for k, v in state.items() if k.startswith('backbone.')}
    model = ShuffleMamba(arch=dict(embed_dims=C, num_layers=DEPTH), img_size=16 * GRID,
                         norm_type='LN', cls_token=None, out_type='featmap',
                         mixer_cfg=dict(d_state=N))
    model.load_state_dict(backbone, strict=True)
    assert torch.equal(model.layers[0].norm.weight, reference['layers.0.norm.weight'])
    assert torch.count_nonzero(model.norm_f.bias) == 0
    layer_norm = dict(reference, **{f'layers.{i}.norm.bias': torch.zeros(C)
                                    for i in range(DEPTH)}, **{'norm_f.bias': torch.zeros(C)})
    torch.save({'model': layer_norm}, str(tmp_path / 'ln_ref.pth'))
    again = run_tool('tools/model_converters/reference2mmpretrain.py',
                     str(tmp_path / 'ln_ref.pth'), str(tmp_path / 'x.pth'),
                     '--rmsnorm-to-layernorm', check=False)
    assert again.returncode != 0 and 'LayerNorm already' in again.stderr
