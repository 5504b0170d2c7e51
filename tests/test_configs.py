"""Every config in configs/ parses and builds its model, so no config can rot.

One fresh interpreter per codebase builds that codebase's first config from its
``custom_imports`` alone (nothing imported before but mmengine), as a user's tool would;
every config, in this process, names the package there and builds on the meta device
(shapes without memory or init: the 40/48-layer models and the Mask R-CNNs take a second
each).
"""
import glob
import os.path as osp
import subprocess
import sys
import textwrap

import pytest
import torch
from helpers import ROOT, load_config

CONFIGS = sorted(
    osp.relpath(p, ROOT) for p in glob.glob(osp.join(ROOT, 'configs', '**', '*.py'),
                                            recursive=True)
    if '_base_' not in p)
# the codebase each config folder is written for
SCOPES = {'shufflemamba': 'mmpretrain', 'vim': 'mmpretrain', 'upernet': 'mmseg',
          'mask_rcnn': 'mmdet'}

FROM_CUSTOM_IMPORTS = textwrap.dedent('''
    import sys
    import torch
    from mmengine.config import Config
    from mmengine.registry import MODELS, init_default_scope
    from mmengine.utils import import_modules_from_strings
    cfg = Config.fromfile(sys.argv[1])
    import_modules_from_strings(**cfg.custom_imports)
    init_default_scope(cfg.default_scope)
    with torch.device('meta'):
        model = MODELS.build(cfg.model)
    print('BUILT', type(model.backbone).__name__, flush=True)
''')


def test_configs_found():
    assert len(CONFIGS) >= 15, CONFIGS
    folders = {c.split(osp.sep)[1] for c in CONFIGS}
    assert folders == set(SCOPES), folders


def configs_of(scope: str):
    return [c for c in CONFIGS if SCOPES[c.split(osp.sep)[1]] == scope]


@pytest.mark.parametrize('scope', sorted(set(SCOPES.values())))
def test_a_config_builds_from_its_custom_imports_alone(scope):
    first = configs_of(scope)[0]
    proc = subprocess.run([sys.executable, '-c', FROM_CUSTOM_IMPORTS, first], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f'{first} failed:\n{proc.stderr[-3000:]}'
    assert 'BUILT ShuffleMamba' in proc.stdout, proc.stdout


@pytest.mark.parametrize('scope', sorted(set(SCOPES.values())))
def test_configs_build(scope):
    from mmengine.registry import MODELS, init_default_scope
    from mmengine.utils import import_modules_from_strings
    for path in configs_of(scope):
        cfg = load_config(path)
        assert 'mmshufflemamba' in cfg.custom_imports['imports'], (path, cfg.custom_imports)
        assert cfg.default_scope == scope, path
        import_modules_from_strings(**cfg.custom_imports)
        init_default_scope(scope)  # conftest restores the scope after the test
        with torch.device('meta'):
            model = MODELS.build(cfg.model)
        backbone = type(model.backbone).__name__
        assert backbone in ('ShuffleMamba', 'ShuffleMambaAdapter'), (path, backbone)
        assert sum(p.numel() for p in model.parameters()) > 0, path
