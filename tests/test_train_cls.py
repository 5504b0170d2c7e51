"""tools/train.py and tools/test.py on generated data, run as users run them."""
import os.path as osp
import pickle

import pytest
import torch
from helpers import ROOT, logged_scalars, printed_metrics, run_tool

import mmshufflemamba  # noqa: F401  (allow-lists mmengine's checkpoint types)
from mmshufflemamba.datasets import make_toy_classification

TOY_CONFIG = osp.join(ROOT, 'configs/shufflemamba/shufflemamba-toy_1xb32_toycls.py')

FIXED_BATCH_CONFIG = '''
_base_ = '{base}'
data_root = '{data}'
model = dict(backbone=dict(shuffle_rate=0.0))
# 16 images, batch 16, no random transforms: every iteration sees the same batch
pipeline = [dict(type='LoadImageFromFile'), dict(type='PackInputs')]
train_dataloader = dict(batch_size=16, dataset=dict(data_root=data_root, pipeline=pipeline))
val_dataloader = dict(dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
param_scheduler = [dict(type='ConstantLR', factor=1.0, by_epoch=False)]
optim_wrapper = dict(optimizer=dict(lr=1e-3))
train_cfg = dict(max_iters={iters}, val_interval=1000)
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval={ckpt_every}))
'''


@pytest.fixture(scope='module')
def toy_data(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('toy_cls'))
    make_toy_classification(root, num_classes=4, train_per_class=4, val_per_class=4)
    return root


def write_config(tmp_path, data, iters, ckpt_every):
    path = tmp_path / 'fixed_batch.py'
    path.write_text(FIXED_BATCH_CONFIG.format(base=TOY_CONFIG, data=data, iters=iters,
                                              ckpt_every=ckpt_every))
    return str(path)


@pytest.mark.slow
def test_train_loss_falls_then_resume_continues(tmp_path, toy_data):
    work_dir = str(tmp_path / 'work')
    config = write_config(tmp_path, toy_data, iters=30, ckpt_every=15)
    run_tool('tools/train.py', config, '--work-dir', work_dir)
    (first_run, ) = logged_scalars(work_dir)
    losses = [r['loss'] for r in first_run if 'loss' in r]
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5, losses

    # --resume (latest checkpoint of the work dir) continues at iteration 31
    config = write_config(tmp_path, toy_data, iters=36, ckpt_every=6)
    proc = run_tool('tools/train.py', config, '--work-dir', work_dir, '--resume')
    assert 'resumed' in proc.stdout + proc.stderr
    second_run = logged_scalars(work_dir)[-1]
    iters = [r['iter'] for r in second_run if 'loss' in r]
    assert iters[0] == 31 and iters[-1] == 36, iters
    assert osp.isfile(osp.join(work_dir, 'iter_36.pth'))

    # the checkpoint loads back as load_from (tools/test.py) under weights_only=True
    proc = run_tool('tools/test.py', config, osp.join(work_dir, 'iter_36.pth'),
                    '--work-dir', str(tmp_path / 'test'))
    assert 0.0 <= printed_metrics(proc)['accuracy/top1'] <= 100.0


@pytest.mark.slow
def test_checkpoint_with_foreign_class_is_refused(tmp_path, toy_data):
    config = write_config(tmp_path, toy_data, iters=2, ckpt_every=2)
    evil = tmp_path / 'evil.pth'
    torch.save({'state_dict': {}, 'meta': {'payload': ForeignThing()}}, str(evil))
    proc = run_tool('tools/train.py', config, '--work-dir', str(tmp_path / 'w'), '--resume',
                    str(evil), check=False)
    assert proc.returncode != 0
    assert 'Unsupported global' in proc.stderr and 'ForeignThing' in proc.stderr


class ForeignThing:
    """A class no checkpoint of ours contains."""


def test_mmengine_checkpoint_types_load_and_others_are_refused(tmp_path):
    from mmengine.logging import HistoryBuffer, MessageHub
    import numpy as np
    hub = MessageHub('test_ckpt_hub')
    hub.update_scalar('train/loss', 0.5)
    hub.update_info('best', np.float64(0.25))
    path = str(tmp_path / 'ok.pth')
    torch.save({'message_hub': hub.state_dict(), 'meta': {'array': np.arange(3),
                                                          'seed': np.int64(7)}}, path)
    loaded = torch.load(path)  # weights_only=True is torch's default
    assert isinstance(loaded['message_hub']['log_scalars']['train/loss'], HistoryBuffer)
    assert loaded['meta']['array'].tolist() == [0, 1, 2]

    torch.save({'x': ForeignThing()}, str(tmp_path / 'foreign.pth'))
    with pytest.raises(pickle.UnpicklingError, match='ForeignThing'):
        torch.load(str(tmp_path / 'foreign.pth'))


class _GetattrExploit:
    """Pickles as getattr(HistoryBuffer, '__init__'): a lookup mmengine never writes."""

    def __reduce__(self):
        from mmengine.logging import HistoryBuffer
        return getattr, (HistoryBuffer, '__init__')


def test_restricted_getattr_refuses_other_lookups(tmp_path):
    path = str(tmp_path / 'getattr.pth')
    torch.save({'x': _GetattrExploit()}, path)
    with pytest.raises(pickle.UnpicklingError, match='Refusing getattr'):
        torch.load(path)
