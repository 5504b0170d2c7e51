"""Every config in configs/ parses and builds its model, so no config can rot."""
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

BUILD = textwrap.dedent('''
    import sys
    import torch
    from mmengine.config import Config
    from mmengine.registry import MODELS, init_default_scope
    from mmengine.utils import import_modules_from_strings
    cfg = Config.fromfile(sys.argv[1])
    import_modules_from_strings(**cfg.custom_imports)
    init_default_scope(cfg.default_scope)
    model = MODELS.build(cfg.model)
    backbone = model.backbone
    assert type(backbone).__name__ in ('ShuffleMamba', 'ShuffleMambaAdapter'), type(backbone)
    print(cfg.default_scope, sum(p.numel() for p in model.parameters()))
''')


def test_configs_found():
    assert len(CONFIGS) >= 15, CONFIGS


@pytest.mark.parametrize('config', CONFIGS)
def test_config_builds(config):
    # a fresh interpreter per config: configs must work from custom_imports alone
    proc = subprocess.run([sys.executable, '-c', BUILD, config], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    scope, params = proc.stdout.strip().splitlines()[-1].split()
    assert scope in ('mmpretrain', 'mmseg', 'mmdet') and int(params) > 0
