"""The demo shows its result: toy datasets with their own classes, pictures of predictions
(tools/analysis_tools/show_predictions.py), training curves (plot_curves.py), and
tools/demo.sh end to end."""
import glob
import json
import os
import os.path as osp
import re

import pytest
from helpers import (CLS, MASK_RCNN, ROOT, UPERNET, data_overrides, load_config, run_tool,
                     write_child_config)
from PIL import Image

from mmshufflemamba.datasets import (TOY_ADE_CLASSES, TOY_ADE_PALETTE, TOY_COCO_CLASSES,
                                     TOY_COCO_PALETTE, TOY_SHAPES, make_toy_ade20k,
                                     make_toy_coco)

REAL_UPERNET = sorted(
    osp.relpath(p, ROOT) for p in glob.glob(osp.join(ROOT, 'configs/upernet/*.py'))
    if 'toy' not in p)


def as_lists(palette):
    return [list(color) for color in palette]


def test_toy_configs_declare_the_toy_datasets_classes():
    for config, classes, palette in ((UPERNET, TOY_ADE_CLASSES, TOY_ADE_PALETTE),
                                     (MASK_RCNN, TOY_COCO_CLASSES, TOY_COCO_PALETTE)):
        cfg = load_config(config)
        for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
            meta = cfg[loader].dataset.metainfo
            assert tuple(meta['classes']) == classes, (config, loader, meta)
            assert as_lists(meta['palette']) == as_lists(palette), (config, loader, meta)
    cfg = load_config(UPERNET)
    assert cfg.model.decode_head.num_classes == len(TOY_ADE_CLASSES)
    assert cfg.model.auxiliary_head.num_classes == len(TOY_ADE_CLASSES)
    cfg = load_config(CLS)
    assert tuple(cfg.test_dataloader.dataset.metainfo['classes']) == TOY_SHAPES[:4]


@pytest.mark.parametrize('config', REAL_UPERNET)
def test_real_ade20k_configs_keep_the_150_classes(config):
    cfg = load_config(config)
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        dataset = cfg[loader].dataset
        assert dataset.type == 'ADE20KDataset' and 'metainfo' not in dataset, dataset
    assert cfg.model.decode_head.num_classes == 150
    assert cfg.model.auxiliary_head.num_classes == 150


def test_toy_ade_labels_map_onto_its_own_classes(tmp_path):
    """reduce_zero_label maps the files' 1..5 onto classes 0..4, the frame onto 255."""
    import numpy as np
    from mmengine.registry import DATASETS, init_default_scope

    import mmseg.datasets  # noqa: F401  (registers BaseSegDataset)
    make_toy_ade20k(str(tmp_path), num_train=1, num_val=12)
    cfg = load_config(UPERNET)
    cfg.test_dataloader.dataset.data_root = str(tmp_path)
    init_default_scope('mmseg')
    dataset = DATASETS.build(cfg.test_dataloader.dataset)
    assert tuple(dataset.metainfo['classes']) == TOY_ADE_CLASSES
    assert len(dataset) == 12
    seen = set()
    for i in range(len(dataset)):
        labels = set(np.unique(dataset[i]['data_samples'].gt_sem_seg.data.numpy()).tolist())
        assert labels <= set(range(len(TOY_ADE_CLASSES))) | {255}, labels
        assert 255 in labels  # the frame of "other" is ignored
        seen |= labels
    assert seen == set(range(len(TOY_ADE_CLASSES))) | {255}, seen


def write_scalars(work_dir, records, run='20260101_000000'):
    path = work_dir / run / 'vis_data' / 'scalars.json'
    path.parent.mkdir(parents=True)
    path.write_text(''.join(json.dumps(r) + '\n' for r in records))
    return path


def test_plot_curves_draws_loss_and_metric(tmp_path):
    train = [dict(loss=2.0 / i, **{'decode.loss_ce': 1.0 / i}, lr=0.1, iter=10 * i,
                  step=10 * i) for i in range(1, 7)]
    val = [dict(mIoU=40.0, aAcc=90.0, step=30), dict(mIoU=70.5, aAcc=95.0, step=60)]
    write_scalars(tmp_path, train[:3] + val[:1] + train[3:] + val[1:])
    # a later tools/test.py run in the same work dir logs no training records
    write_scalars(tmp_path, [dict(mIoU=70.5, step=60)], run='20260101_000100')
    out = tmp_path / 'curve.png'
    proc = run_tool('tools/analysis_tools/plot_curves.py', str(tmp_path), '--out', str(out))
    assert '6 training and 2 validation records' in proc.stdout, proc.stdout
    assert '20260101_000000' in proc.stdout and 'mIoU 70.50' in proc.stdout, proc.stdout
    assert Image.open(out).size == (1100, 400)

    by_epoch = tmp_path / 'by_epoch'
    write_scalars(by_epoch, train + [dict(mIoU=1.0, step=0), dict(mIoU=2.0, step=0)])
    proc = run_tool('tools/analysis_tools/plot_curves.py', str(by_epoch))
    assert 'log_metric_by_epoch=False' in proc.stdout, proc.stdout
    assert osp.isfile(by_epoch / 'vis' / 'training_curve.png')

    proc = run_tool('tools/analysis_tools/plot_curves.py', str(tmp_path / 'none'),
                    check=False)
    assert proc.returncode != 0 and 'no such work dir' in proc.stderr, proc.stderr


@pytest.mark.parametrize('task', ['upernet', 'mask_rcnn'])
def test_show_predictions_draws_image_truth_prediction(tmp_path, task, untrained_checkpoints):
    if task == 'upernet':
        data, base, scale, size = str(tmp_path / 'ade'), UPERNET, 4, 64
        make_toy_ade20k(data, num_train=1, num_val=5)
        extra = ''
    else:
        data, base, scale, size = str(tmp_path / 'coco') + '/', MASK_RCNN, 2, 128
        make_toy_coco(data, num_train=1, num_val=5)
        extra = ("val_evaluator = dict(ann_file=data_root + "
                 "'annotations/instances_val2017.json')\ntest_evaluator = val_evaluator\n")
    config = write_child_config(tmp_path / 'cfg.py', base, data_overrides(data) + extra)
    checkpoint = str(tmp_path / 'untrained.pth')  # the pictures go beside it by default
    os.symlink(untrained_checkpoints['seg' if task == 'upernet' else 'det'], checkpoint)
    proc = run_tool('tools/analysis_tools/show_predictions.py', config, checkpoint,
                    '--num', '3', '--score-thr', '0.0')
    out = tmp_path / 'vis' / 'predictions.png'  # default: beside the checkpoint
    assert f'3 test images): {out}' in proc.stdout, proc.stdout
    rows = [ln for ln in proc.stdout.splitlines() if re.match(r'\[\d\] ', ln)]
    assert [ln[:3] for ln in rows] == ['[0]', '[2]', '[4]'], rows
    side, gap = size * scale, 6
    assert Image.open(out).size == (3 * side + 2 * gap, 30 + 3 * (side + gap))
    if task == 'upernet':  # the class names are the toy set's
        for row in rows:
            truth, pred = row.split('ground truth: ')[1].split(' | prediction: ')
            assert set(truth.split(', ')) <= set(TOY_ADE_CLASSES), row
            assert set(pred.split(', ')) <= set(TOY_ADE_CLASSES), row


def test_show_predictions_errors_say_what_to_do(tmp_path):
    missing = str(tmp_path / 'x.pth')
    proc = run_tool('tools/analysis_tools/show_predictions.py', CLS, missing, check=False)
    assert proc.returncode != 0 and 'demo/image_demo.py' in proc.stderr, proc.stderr
    proc = run_tool('tools/analysis_tools/show_predictions.py', UPERNET, missing,
                    check=False)
    assert proc.returncode != 0 and f'{missing}: no such file' in proc.stderr, proc.stderr


def demo_summary(proc):
    """The lines tools/demo.sh prints after '== demo done'."""
    lines = proc.stdout.splitlines()
    return lines[[i for i, ln in enumerate(lines) if ln.startswith('== demo done')][-1]:]


@pytest.mark.slow
def test_demo_sh_upernet_prints_metric_and_pictures(tmp_path):
    work_dir = str(tmp_path / 'demo')
    proc = run_tool('tools/demo.sh', shell_script=True, env=dict(WORK_DIR=work_dir))
    summary = demo_summary(proc)
    print('\n'.join(summary))
    assert len(summary) == 5, summary
    miou = float(re.search(r'test set: mIoU ([\d.]+)', summary[2]).group(1))
    assert miou > 50.0, summary
    predictions, curve = (osp.join(work_dir, 'vis', name)
                          for name in ('predictions.png', 'training_curve.png'))
    assert summary[3].endswith(predictions) and summary[4].endswith(curve), summary
    assert Image.open(predictions).size == (3 * 256 + 12, 30 + 4 * (256 + 6))
    assert Image.open(curve).size == (1100, 400)
    # the per-class tables (each validation's and the test's): the toy classes, no nan
    rows = [ln.split('|')[1].strip() for ln in proc.stdout.splitlines()
            if re.match(r'\|\s+\w+\s+\|\s+[\d.]+\s+\|', ln)]
    assert len(rows) == 7 * len(TOY_ADE_CLASSES) and set(rows) == set(TOY_ADE_CLASSES)
    assert 'nan' not in proc.stdout
    # validations every 50 iterations make the curve: six mIoU values, rising
    assert 'and 6 validation records' in proc.stdout


@pytest.mark.slow
def test_demo_sh_mask_rcnn_prints_metric_and_pictures(tmp_path):
    work_dir = str(tmp_path / 'demo')
    proc = run_tool('tools/demo.sh', 'mask-rcnn', shell_script=True,
                    env=dict(WORK_DIR=work_dir), timeout=1800)
    summary = demo_summary(proc)
    print('\n'.join(summary))
    assert len(summary) == 5, summary
    found = re.search(r'test set: coco/bbox_mAP ([\d.]+)  coco/segm_mAP ([\d.]+)', summary[2])
    bbox, segm = float(found.group(1)), float(found.group(2))
    assert bbox >= 0.3 and segm >= 0.25, summary  # a detector that learned, not a pipeline
    predictions = osp.join(work_dir, 'vis', 'predictions.png')
    assert summary[3].endswith(predictions), summary
    assert Image.open(predictions).size == (3 * 256 + 12, 30 + 4 * (256 + 6))
    assert 'and 3 validation records' in proc.stdout
