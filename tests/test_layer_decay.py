"""Layer-wise lr decay: the lr and weight decay of every parameter, under every scope."""
import subprocess
import sys
import textwrap

import pytest
from torch import nn

from mmshufflemamba.engine import LayerDecayOptimWrapperConstructor
from mmshufflemamba.models import ShuffleMamba


class Segmentor(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = ShuffleMamba(arch=dict(embed_dims=16, num_layers=3), img_size=32,
                                     patch_size=16, cls_token=None, num_registers=1,
                                     out_type='featmap',
                                     mixer_cfg=dict(d_state=2))
        self.head = nn.Sequential(nn.Conv2d(16, 8, 1), nn.BatchNorm2d(8))


def expected_depth(name: str) -> int:
    """Depth by name, written independently of get_layer_depth: embeddings 0, block i
    is i + 1, the rest 4 (= 3 blocks + 2 - 1)."""
    if name.startswith(('backbone.pos_embed', 'backbone.cls_token', 'backbone.patch_embed',
                        'backbone.register_tokens', 'backbone.pos_embed_reg')):
        return 0
    if name.startswith('backbone.layers.'):
        return int(name.split('.')[2]) + 1
    return 4


NO_DECAY_SUFFIXES = ('bias', 'norm.weight', 'norm_f.weight', 'A_log', 'A_b_log', 'mixer.D',
                     'mixer.D_b', 'pos_embed', 'cls_token', 'register_tokens',
                     'pos_embed_reg', 'head.1.weight')


def test_every_parameter_gets_its_lr_and_weight_decay():
    model = Segmentor()
    constructor = LayerDecayOptimWrapperConstructor(
        dict(optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05)),
        dict(layer_decay_rate=0.5))
    optim_wrapper = constructor(model)
    seen = {}
    for group in optim_wrapper.optimizer.param_groups:
        for param in group['params']:
            seen[id(param)] = (group['lr'], group['weight_decay'])
    names = dict(model.named_parameters())
    assert len(seen) == len(names)
    for name, param in names.items():
        lr, wd = seen[id(param)]
        assert lr == pytest.approx(1e-3 * 0.5**(4 - expected_depth(name))), name
        assert wd == (0.0 if name.endswith(NO_DECAY_SUFFIXES) else 0.05), name
    # a weight matrix inside a block does decay, at its layer's lr
    assert seen[id(names['backbone.layers.1.mixer.in_proj.weight'])] == pytest.approx(
        (1e-3 * 0.5**2, 0.05))


def test_rejects_missing_rate_and_models_without_depth():
    with pytest.raises(ValueError, match='layer_decay_rate'):
        LayerDecayOptimWrapperConstructor(dict(optimizer=dict(type='SGD', lr=0.1)), {})
    with pytest.raises(ValueError, match='does not understand'):
        LayerDecayOptimWrapperConstructor(dict(optimizer=dict(type='SGD', lr=0.1)),
                                          dict(layer_decay_rate=0.9, decay_mult=1))
    constructor = LayerDecayOptimWrapperConstructor(
        dict(optimizer=dict(type='SGD', lr=0.1, weight_decay=0.0)), dict(layer_decay_rate=0.9))
    with pytest.raises(TypeError, match='get_layer_depth'):
        constructor(nn.Sequential(nn.Linear(2, 2)))


@pytest.mark.parametrize('scope', ['mmpretrain', 'mmseg', 'mmdet'])
def test_builds_from_each_codebase_scope(scope):
    code = textwrap.dedent(f'''
        import torch
        from mmengine.registry import init_default_scope
        from mmengine.utils import import_modules_from_strings
        import_modules_from_strings(['mmshufflemamba'])
        init_default_scope('{scope}')
        from mmengine.optim import build_optim_wrapper
        from mmshufflemamba.models import ShuffleMamba
        model = torch.nn.Module()
        model.backbone = ShuffleMamba(arch=dict(embed_dims=16, num_layers=2), img_size=32,
                                      patch_size=16)
        wrapper = build_optim_wrapper(model, dict(
            optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05),
            constructor='mmshufflemamba.LayerDecayOptimWrapperConstructor',
            paramwise_cfg=dict(layer_decay_rate=0.5)))
        print(sorted({{round(g['lr'], 8) for g in wrapper.optimizer.param_groups}}))
    ''')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == '[0.000125, 0.00025, 0.0005, 0.001]'
