"""One registration, usable from mmpretrain, mmseg and mmdet configs."""
import subprocess
import sys
import textwrap

import pytest


def test_import_needs_none_of_the_downstream_codebases():
    code = textwrap.dedent('''
        import sys
        for name in ('mmpretrain', 'mmseg', 'mmdet', 'mmcv'):
            sys.modules[name] = None  # makes "import name" raise ImportError
        import torch
        import mmshufflemamba
        from mmshufflemamba.registry import MODELS
        model = MODELS.build(dict(type='ShuffleMamba', arch=dict(embed_dims=16,
                                  num_layers=2), img_size=32, patch_size=16))
        print(model(torch.randn(1, 3, 32, 32))[0].shape)
    ''')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert 'torch.Size([1, 16])' in out.stdout


@pytest.mark.parametrize('scope', ['mmpretrain', 'mmseg', 'mmdet'])
def test_scoped_type_builds_under_every_default_scope(scope):
    """Run in a fresh interpreter: the registries must resolve ``mmshufflemamba.X`` from
    the codebase's own MODELS registry with only ``custom_imports`` done. The import itself
    leaves the codebases unimported (the classification head, which needs mmpretrain, is
    imported by the first lookup)."""
    code = textwrap.dedent(f'''
        import sys
        from mmengine.registry import DefaultScope, init_default_scope
        from mmengine.utils import import_modules_from_strings
        import_modules_from_strings(['mmshufflemamba'])
        print('imported:', sorted(m for m in ('mmpretrain', 'mmseg', 'mmdet')
                                  if m in sys.modules))
        init_default_scope('{scope}')
        from {scope}.registry import MODELS
        cfg = dict(type='mmshufflemamba.ShuffleMamba', arch=dict(embed_dims=16,
                   num_layers=2), img_size=32, patch_size=16)
        model = MODELS.build(cfg)
        print(type(model).__module__, type(model).__name__)
        if '{scope}' == 'mmpretrain':
            head = MODELS.build(dict(type='mmshufflemamba.RegisterClsHead', num_classes=3,
                                     in_channels=16, num_registers=2))
            print(type(head).__module__, type(head).__name__)
    ''')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert 'imported: []' in out.stdout, out.stdout
    assert 'mmshufflemamba.models.backbones.shuffle_mamba ShuffleMamba' in out.stdout
    if scope == 'mmpretrain':
        assert 'mmshufflemamba.models.heads.register_head RegisterClsHead' in out.stdout
