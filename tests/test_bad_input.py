"""Mistakes users make fail with an error that names the problem and the fix."""
import os.path as osp

import pytest
import torch
from helpers import CLS, ROOT, run_tool, write_child_config

from mmshufflemamba.datasets import make_toy_classification
from mmshufflemamba.models import ShuffleMamba

SMALL = dict(arch=dict(embed_dims=16, num_layers=2), img_size=32, patch_size=16,
             mixer_cfg=dict(d_state=2))


def forward(**overrides):
    def run(tmp_path):
        shape = overrides.pop('shape', (1, 3, 32, 32))
        ShuffleMamba(**SMALL, **overrides).eval()(torch.randn(*shape))
    return run


def load(**overrides):
    def run(tmp_path):
        src = ShuffleMamba(**dict(SMALL, **overrides))
        ShuffleMamba(**SMALL).load_state_dict(src.state_dict())
    return run


def train_missing_data(tmp_path):
    config = write_child_config(tmp_path / 'cfg.py', CLS,
                                f"data_root = '{tmp_path}/nowhere'\n"
                                'train_dataloader = dict(dataset=dict(data_root=data_root))\n')
    proc = run_tool('tools/train.py', config, '--work-dir', str(tmp_path / 'w'), check=False)
    assert proc.returncode != 0
    raise RuntimeError(proc.stderr.strip().splitlines()[-1])


def run_corrupt_checkpoint(tmp_path):
    bad = tmp_path / 'iter_4.pth'
    bad.write_bytes(b'PK\x03\x04 this is half a checkpoint')
    proc = run_tool('tools/test.py', osp.join(ROOT, CLS), str(bad), check=False)
    assert proc.returncode != 0
    raise RuntimeError(proc.stderr.strip().splitlines()[-1])


CASES = {
    'input side not a multiple of the patch': (
        forward(shape=(1, 3, 32, 40)), 'not a multiple of the patch size 16',
        'Resize or pad'),
    'wrong channel count': (forward(shape=(1, 1, 32, 32)), 'Expected 3 input channels, got 1',
                            'set in_channels'),
    'checkpoint of another architecture': (
        load(arch=dict(embed_dims=16, num_layers=3)), 'has 3 blocks but this backbone has 2',
        'Set arch'),
    'checkpoint of another norm type': (load(norm_type='LN'), 'use LN but this backbone',
                                        "Set norm_type='LN'"),
    'shuffle_rate outside [0, 1]': (forward(shuffle_rate=1.5), 'shuffle_rate must lie in',
                                    '[0, 1]'),
    'out_indices outside the depth': (forward(out_indices=[2]), 'outside the depth',
                                      'valid: -2..1'),
    'dataset path that does not exist': (train_missing_data, 'does not exist',
                                         'make_toy_data.py'),
    'corrupt checkpoint file': (run_corrupt_checkpoint, 'not a readable torch checkpoint',
                                'Use an earlier checkpoint'),
}


@pytest.mark.parametrize('case', sorted(CASES))
def test_error_names_problem_and_fix(case, tmp_path):
    run, problem, fix = CASES[case]
    with pytest.raises(Exception) as info:
        run(tmp_path)
    message = str(info.value)
    assert problem in message and fix in message, message


INTERRUPT_SAVE = '''
import runpy, sys
from mmengine.fileio.backends import LocalBackend
real_put, calls = LocalBackend.put, []
def put(self, obj, filepath):
    calls.append(filepath)
    if len(calls) == 2:  # the second checkpoint: write half of it, then die
        with open(filepath, 'wb') as f:
            f.write(obj[:len(obj) // 2])
        raise KeyboardInterrupt('killed while writing ' + str(filepath))
    return real_put(self, obj, filepath)
LocalBackend.put = put
sys.argv = ['tools/train.py'] + sys.argv[1:]
runpy.run_path('tools/train.py', run_name='__main__')
'''


@pytest.mark.slow
def test_interrupted_checkpoint_write_leaves_previous_one_usable(tmp_path):
    data = str(tmp_path / 'toy_cls')
    make_toy_classification(data, train_per_class=4, val_per_class=1)
    config = write_child_config(
        tmp_path / 'cfg.py', CLS,
        f"data_root = '{data}'\n"
        'train_dataloader = dict(batch_size=8, dataset=dict(data_root=data_root))\n'
        'val_dataloader = dict(dataset=dict(data_root=data_root))\n'
        'test_dataloader = val_dataloader\n'
        'train_cfg = dict(max_iters=6, val_interval=1000)\n'
        'default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=2))\n')
    work_dir = str(tmp_path / 'work')
    proc = run_tool('-c', INTERRUPT_SAVE, config, '--work-dir', work_dir, check=False)
    assert proc.returncode != 0 and 'killed while writing' in proc.stderr
    with open(osp.join(work_dir, 'last_checkpoint')) as f:
        assert f.read().strip().endswith('iter_2.pth')  # still the complete one
    torch.load(osp.join(work_dir, 'iter_2.pth'))
    proc = run_tool('tools/test.py', config, osp.join(work_dir, 'iter_4.pth'), check=False)
    assert 'not a readable torch checkpoint' in proc.stderr
    proc = run_tool('tools/train.py', config, '--work-dir', work_dir, '--resume')
    assert 'resumed' in proc.stdout + proc.stderr
    assert osp.isfile(osp.join(work_dir, 'iter_6.pth'))
