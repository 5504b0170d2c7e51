"""The tools do not fail silently: CPU multi-process dense training, checkpoints that do not
fit, the test-time options of each codebase, and size errors that name the fix."""
import glob
import os
import os.path as osp
import pickle

import pytest
import torch
from helpers import (CLS, MASK_RCNN, UPERNET, data_overrides, free_port, run_tool,
                     write_child_config)

from mmshufflemamba.datasets import make_toy_ade20k, make_toy_classification, make_toy_coco


def toy(tmp_path, kind: str):
    """(config, number of test images) for the toy data of ``kind``, generated in tmp."""
    if kind == 'seg':
        data = str(tmp_path / 'toy_ade')
        make_toy_ade20k(data)
        return write_child_config(tmp_path / 'seg.py', UPERNET, data_overrides(data)), len(
            os.listdir(osp.join(data, 'images', 'validation')))
    if kind == 'det':
        data = str(tmp_path / 'toy_coco') + '/'
        make_toy_coco(data)
        body = data_overrides(data) + (
            "val_evaluator = dict(ann_file=data_root + 'annotations/instances_val2017.json')\n"
            'test_evaluator = val_evaluator\n')
        return write_child_config(tmp_path / 'det.py', MASK_RCNN, body), len(
            os.listdir(osp.join(data, 'val2017')))
    data = str(tmp_path / 'toy_cls')
    make_toy_classification(data, train_per_class=4, val_per_class=2)
    config = write_child_config(tmp_path / 'cls.py', CLS, data_overrides(data))
    with open(osp.join(data, 'meta', 'val.txt')) as f:
        return config, len(f.read().split('\n')) - 1


@pytest.mark.slow
@pytest.mark.parametrize('kind', ['seg', 'det'])
def test_two_cpu_processes_train_dense_configs(tmp_path, kind):
    """The README's CPU command with the toy UperNet (SyncBN heads) and Mask R-CNN."""
    config, _ = toy(tmp_path, kind)
    work_dir = str(tmp_path / 'work')
    proc = run_tool('tools/dist_train.sh', config, '--work-dir', work_dir, '--cfg-options',
                    'env_cfg.dist_cfg.backend=gloo', 'train_cfg.max_iters=4',
                    'train_cfg.val_interval=4', 'default_hooks.checkpoint.interval=4',
                    shell_script=True, env=dict(GPUS='2', PORT=str(free_port())))
    assert osp.isfile(osp.join(work_dir, 'iter_4.pth'))
    log = proc.stdout + proc.stderr
    if kind == 'seg':  # the heads' SyncBN, trained as BatchNorm (mmengine logs on rank 0)
        assert 'SyncBN layers are trained as BatchNorm' in log, log[-3000:]


@pytest.mark.slow
def test_a_checkpoint_that_does_not_fit_is_refused(tmp_path, untrained_checkpoints):
    seg, _ = toy(tmp_path, 'seg')
    classifier = untrained_checkpoints['cls']
    proc = run_tool('tools/test.py', seg, classifier, '--work-dir', str(tmp_path / 'w1'),
                    check=False)
    assert proc.returncode != 0
    assert 'does not fit this model (EncoderDecoder)' in proc.stderr
    assert 'unexpected keys (2): head.fc.weight, head.fc.bias' in proc.stderr
    assert 'missing keys' in proc.stderr and 'decode_head.*' in proc.stderr
    assert '--partial-load' in proc.stderr
    assert 'metrics:' not in proc.stdout
    # a deliberate partial load runs (and says what it skipped)
    proc = run_tool('tools/test.py', seg, classifier, '--work-dir', str(tmp_path / 'w2'),
                    '--partial-load')
    assert 'metrics:' in proc.stdout
    # load_from in training is held to the same rule
    proc = run_tool('tools/train.py', seg, '--work-dir', str(tmp_path / 'w3'), '--cfg-options',
                    f'load_from={classifier}', 'train_cfg.max_iters=1', check=False)
    assert proc.returncode != 0 and 'does not fit this model' in proc.stderr


@pytest.mark.slow
def test_segmentation_test_options(tmp_path, untrained_checkpoints):
    seg, images = toy(tmp_path, 'seg')
    ckpt = untrained_checkpoints['seg']
    show, out = tmp_path / 'show', tmp_path / 'out'
    run_tool('tools/test.py', seg, ckpt, '--work-dir', str(tmp_path / 'w'), '--show-dir',
             str(show), '--out', str(out))
    painted = glob.glob(str(show / '**' / '*.png'), recursive=True)
    assert len(painted) == images  # every image of the small set, not every 50th
    assert len(os.listdir(out)) == images  # mmseg: one predicted label map per image
    proc = run_tool('tools/test.py', seg, ckpt, '--work-dir', str(tmp_path / 'w2'), '--tta',
                    '--cfg-options', 'test_dataloader.dataset.indices=2')
    assert 'metrics:' in proc.stdout


@pytest.mark.slow
def test_detection_test_options(tmp_path, untrained_checkpoints):
    det, images = toy(tmp_path, 'det')
    ckpt = untrained_checkpoints['det']
    show, out = tmp_path / 'show', str(tmp_path / 'predictions.pkl')
    run_tool('tools/test.py', det, ckpt, '--work-dir', str(tmp_path / 'w'), '--show-dir',
             str(show), '--out', out)
    assert len(glob.glob(str(show / '*.jpg'))) == images
    with open(out, 'rb') as f:
        assert len(pickle.load(f)) == images  # mmdet: a pickle of the predictions
    proc = run_tool('tools/test.py', det, ckpt, '--tta', check=False)
    assert proc.returncode != 0 and 'does not support instance segmentation' in proc.stderr


@pytest.mark.slow
def test_classification_test_options(tmp_path, untrained_checkpoints):
    cls, images = toy(tmp_path, 'cls')
    ckpt = untrained_checkpoints['cls']
    show, out = tmp_path / 'show', str(tmp_path / 'predictions.pkl')
    run_tool('tools/test.py', cls, ckpt, '--work-dir', str(tmp_path / 'w'), '--show-dir',
             str(show), '--out', out)
    assert len(glob.glob(str(show / '*.png'))) == images
    with open(out, 'rb') as f:
        assert len(pickle.load(f)) == images
    metrics = str(tmp_path / 'metrics.json')
    proc = run_tool('tools/test.py', cls, ckpt, '--work-dir', str(tmp_path / 'w2'), '--tta',
                    '--out', metrics, '--out-item', 'metrics')
    assert 'accuracy/top1' in open(metrics).read() and 'metrics:' in proc.stdout
    proc = run_tool('tools/test.py', cls, ckpt, '--tta', '--show-dir', str(show),
                    check=False)
    assert proc.returncode != 0 and 'run the two apart' in proc.stderr


@pytest.mark.parametrize('scope,fix', [
    ('mmseg', 'data_preprocessor=dict(test_cfg=dict(size_divisor=16))'),
    ('mmdet', "DetDataPreProcessor's pad_size_divisor"),
    ('mmpretrain', 'ResizeEdge then CenterCrop'),
])
def test_size_error_names_the_fix_of_the_codebase(scope, fix):
    from mmengine.registry import DefaultScope

    from mmshufflemamba.models import ShuffleMamba
    model = ShuffleMamba(arch=dict(embed_dims=16, num_layers=1), img_size=32,
                         mixer_cfg=dict(d_state=2))
    with DefaultScope.overwrite_default_scope(scope):
        with pytest.raises(ValueError, match='not a multiple of the patch size 16') as err:
            model(torch.randn(1, 3, 32, 40))
    assert fix in str(err.value)
