"""Dense prediction end to end: UperNet and Mask R-CNN on the toy data through the tools,
distributed training on CPU, and the analysis tools."""
import math
import os.path as osp

import pytest
from helpers import (CLS, MASK_RCNN, UPERNET, data_overrides, free_port, logged_scalars,
                     printed_metrics, run_tool, save_untrained_checkpoints,
                     write_child_config)

from mmshufflemamba.datasets import (make_toy_ade20k, make_toy_classification,
                                     make_toy_coco)



@pytest.mark.slow
def test_upernet_learns_the_toy_ade_data(tmp_path):
    data = str(tmp_path / 'toy_ade')
    make_toy_ade20k(data)
    config = write_child_config(
        tmp_path / 'upernet.py', UPERNET,
        data_overrides(data))
    untrained = str(tmp_path / 'untrained.pth')
    save_untrained_checkpoints(config, untrained)
    before = printed_metrics(run_tool('tools/test.py', config, untrained, '--work-dir',
                                      str(tmp_path / 'before')))['mIoU']
    work_dir = str(tmp_path / 'work')
    run_tool('tools/train.py', config, '--work-dir', work_dir)
    after = printed_metrics(run_tool('tools/test.py', config,
                                     osp.join(work_dir, 'iter_300.pth'), '--work-dir',
                                     work_dir))['mIoU']
    print(f'toy ADE mIoU: untrained {before:.2f}, trained {after:.2f}')
    assert after > 50.0 and after > before + 30.0, (before, after)


@pytest.mark.slow
def test_mask_rcnn_trains_and_reports_coco_ap(tmp_path):
    data = str(tmp_path / 'toy_coco') + '/'
    make_toy_coco(data)
    config = write_child_config(
        tmp_path / 'mask_rcnn.py', MASK_RCNN,
        data_overrides(data) +
        "val_evaluator = dict(ann_file=data_root + 'annotations/instances_val2017.json')\n"
        'test_evaluator = val_evaluator\n')
    work_dir = str(tmp_path / 'work')
    run_tool('tools/train.py', config, '--work-dir', work_dir)
    metrics = printed_metrics(run_tool('tools/test.py', config,
                                       osp.join(work_dir, 'iter_80.pth'), '--work-dir',
                                       work_dir))
    print('toy COCO metrics:', metrics)
    for task in ('bbox', 'segm'):
        for key in ('mAP', 'mAP_50', 'mAP_75'):
            value = metrics[f'coco/{task}_{key}']
            assert math.isfinite(value) and 0.0 <= value <= 1.0, (task, key, value)


@pytest.mark.slow
def test_dist_train_two_cpu_processes_then_resume(tmp_path):
    data = str(tmp_path / 'toy_cls')
    make_toy_classification(data, train_per_class=8, val_per_class=2)
    config = write_child_config(
        tmp_path / 'cls.py', CLS,
        f"data_root = '{data}'\n"
        'train_dataloader = dict(batch_size=8, dataset=dict(data_root=data_root))\n'
        'val_dataloader = dict(dataset=dict(data_root=data_root))\n'
        'test_dataloader = val_dataloader\n'
        'default_hooks = dict(logger=dict(interval=1))\n')
    work_dir = str(tmp_path / 'work')
    env = dict(GPUS='2', PORT=str(free_port()))
    run_tool('tools/dist_train.sh', config, '--work-dir', work_dir, '--cfg-options',
             'train_cfg.max_iters=4', 'default_hooks.checkpoint.interval=4',
             shell_script=True, env=env)
    assert sorted(p for p in __import__('os').listdir(work_dir) if p.endswith('.pth')) == [
        'iter_4.pth']
    env['PORT'] = str(free_port())
    proc = run_tool('tools/dist_train.sh', config, '--work-dir', work_dir, '--resume',
                    '--cfg-options', 'train_cfg.max_iters=6',
                    'default_hooks.checkpoint.interval=2', shell_script=True, env=env)
    assert 'resumed' in proc.stdout + proc.stderr
    iters = [r['iter'] for r in logged_scalars(work_dir)[-1] if 'loss' in r]
    assert iters == [5, 6], iters
    assert osp.isfile(osp.join(work_dir, 'iter_6.pth'))


def test_get_flops_counts_the_scan():
    proc = run_tool('tools/analysis_tools/get_flops.py', UPERNET, '--shape', '64', '64')
    lines = {ln.split(':')[0].strip(): ln.split(':', 1)[1].strip()
             for ln in proc.stdout.splitlines() if ':' in ln}
    scan = lines['FLOPs (selective scan, added)']
    assert scan[-1] in 'KMG' and float(scan[:-1]) > 0, scan
    assert 'Params' in lines


def test_benchmark_tool_reports_speed_and_memory():
    # batch 2: the head's pooled BatchNorm cannot train on a single image
    for extra in ([], ['--train']):
        proc = run_tool('tools/analysis_tools/benchmark.py', UPERNET, '--shape', '64', '64',
                        '--warmup', '1', '--iters', '2', '--batch-size', '2', *extra)
        assert 'images/s' in proc.stdout and 'peak memory' in proc.stdout, proc.stdout


def test_benchmark_train_defaults_to_batch_two_and_batch_one_says_why():
    args = ('tools/analysis_tools/benchmark.py', UPERNET, '--shape', '64', '64', '--warmup',
            '1', '--iters', '1', '--train')
    proc = run_tool(*args)
    assert 'train step, whole model, batch 2,' in proc.stdout, proc.stdout
    # UPerHead's pooled 1x1 branch has BatchNorm: one image gives one value per channel
    proc = run_tool(*args, '--batch-size', '1', check=False)
    assert proc.returncode != 0
    assert 'Use --batch-size 2 or more' in proc.stderr, proc.stderr
    assert 'Traceback' not in proc.stderr, proc.stderr
