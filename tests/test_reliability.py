"""Exact resume and determinism of training runs on CPU."""
import os.path as osp

import pytest
import torch
from helpers import CLS, logged_scalars, run_tool, write_child_config

from mmshufflemamba.datasets import make_toy_classification


@pytest.fixture(scope='module')
def cls_config(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('reliability')
    data = str(tmp / 'toy_cls')
    make_toy_classification(data, train_per_class=8, val_per_class=2)
    # every layer shuffles and drop-path is on, so the torch random stream matters
    return write_child_config(
        tmp / 'cls.py', CLS,
        f"data_root = '{data}'\n"
        'train_dataloader = dict(batch_size=8, dataset=dict(data_root=data_root))\n'
        'val_dataloader = dict(dataset=dict(data_root=data_root))\n'
        'test_dataloader = val_dataloader\n'
        'model = dict(backbone=dict(shuffle_rate=1.0, drop_path_rate=0.2))\n'
        'default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=4))\n')


def train(config, work_dir, iters, *extra):
    return run_tool('tools/train.py', config, '--work-dir', work_dir, '--cfg-options',
                    f'train_cfg.max_iters={iters}', *extra)


def weights(path):
    ckpt = torch.load(path)
    return {**ckpt['state_dict'], **{'ema.' + k: v for k, v in ckpt['ema_state_dict'].items()}}


def losses(work_dir):
    return {r['iter']: r['loss'] for run in logged_scalars(work_dir) for r in run
            if 'loss' in r}


@pytest.mark.slow
def test_resume_is_bit_identical_and_runs_are_deterministic(tmp_path, cls_config):
    """Determinism: the resumed run's first 4 iterations are a second fresh run of the same
    config, and its logs equal the straight run's, iteration by iteration."""
    straight, resumed = str(tmp_path / 'straight'), str(tmp_path / 'resumed')
    train(cls_config, straight, 8)
    train(cls_config, resumed, 4)
    assert losses(resumed) == {k: v for k, v in losses(straight).items() if k <= 4}
    proc = train(cls_config, resumed, 8, '--resume')
    assert 'resumed' in proc.stdout + proc.stderr

    final = weights(osp.join(straight, 'iter_8.pth'))
    theirs = weights(osp.join(resumed, 'iter_8.pth'))
    assert theirs.keys() == final.keys()
    different = [k for k in final if not torch.equal(final[k], theirs[k])]
    assert not different, different[:5]
    assert losses(resumed) == losses(straight)


@pytest.mark.slow
def test_resume_without_rng_state_would_diverge(tmp_path, cls_config):
    """The control: the same interrupted run without RNGStateHook does not repeat the
    uninterrupted one, so the test above really depends on the saved state."""
    no_hook = ['custom_hooks=[]']
    straight, resumed = str(tmp_path / 'straight'), str(tmp_path / 'resumed')
    train(cls_config, straight, 8, *no_hook)
    train(cls_config, resumed, 4, *no_hook)
    train(cls_config, resumed, 8, *no_hook, '--resume')
    a = torch.load(osp.join(straight, 'iter_8.pth'))['state_dict']
    b = torch.load(osp.join(resumed, 'iter_8.pth'))['state_dict']
    assert any(not torch.equal(a[k], b[k]) for k in a)
