"""Every config in configs/ parses and builds its model, so no config can rot.

One fresh interpreter per codebase builds all of that codebase's configs on the meta device
(shapes without memory or init: the 40/48-layer models and the Mask R-CNNs take a second
each). The first config of each process proves that a config works from its
``custom_imports`` alone; every config is checked to name the package there.
"""
import glob
import os.path as osp
import subprocess
import sys
import textwrap

import pytest

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIGS = sorted(
    osp.relpath(p, ROOT) for p in glob.glob(osp.join(ROOT, 'configs', '**', '*.py'),
                                            recursive=True)
    if '_base_' not in p)
# the codebase each config folder is written for
SCOPES = {'shufflemamba': 'mmpretrain', 'vim': 'mmpretrain', 'upernet': 'mmseg',
          'mask_rcnn': 'mmdet'}

BUILD = textwrap.dedent('''
    import sys
    import torch
    from mmengine.config import Config
    from mmengine.registry import MODELS, init_default_scope
    from mmengine.utils import import_modules_from_strings
    for path in sys.argv[1:]:
        cfg = Config.fromfile(path)
        assert 'mmshufflemamba' in cfg.custom_imports['imports'], cfg.custom_imports
        import_modules_from_strings(**cfg.custom_imports)
        init_default_scope(cfg.default_scope)
        with torch.device('meta'):
            model = MODELS.build(cfg.model)
        backbone = type(model.backbone).__name__
        params = sum(p.numel() for p in model.parameters())
        print('BUILT', path, cfg.default_scope, backbone, params, flush=True)
''')


def test_configs_found():
    assert len(CONFIGS) >= 15, CONFIGS
    folders = {c.split(osp.sep)[1] for c in CONFIGS}
    assert folders == set(SCOPES), folders


@pytest.mark.parametrize('scope', sorted(set(SCOPES.values())))
def test_configs_build(scope):
    configs = [c for c in CONFIGS if SCOPES[c.split(osp.sep)[1]] == scope]
    proc = subprocess.run([sys.executable, '-c', BUILD, *configs], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    built = [line.split()[1:] for line in proc.stdout.splitlines() if line.startswith('BUILT')]
    done = [b[0] for b in built]
    assert proc.returncode == 0, (
        f'{configs[len(done)] if len(done) < len(configs) else "?"} failed:\n'
        f'{proc.stderr[-3000:]}')
    assert done == configs
    for path, cfg_scope, backbone, params in built:
        assert cfg_scope == scope, path
        assert backbone in ('ShuffleMamba', 'ShuffleMambaAdapter'), (path, backbone)
        assert int(params) > 0, path
