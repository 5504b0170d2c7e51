"""Distributed training on CPU and the analysis tools. (That the toy UperNet and Mask
R-CNN learn through tools/train.py and tools/test.py is in test_stability.py.)"""
import os.path as osp

import pytest
from helpers import CLS, UPERNET, free_port, logged_scalars, run_tool, write_child_config

from mmshufflemamba.datasets import make_toy_classification


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
    # what is counted is said once; no warnings that x_proj/dt_proj/conv1d count zero
    # (they are counted in the mixer's row) or one per uncounted elementwise op
    output = proc.stdout + proc.stderr
    assert 'zeros for statistics' not in output and 'Unsupported operator' not in output
    assert "x_proj and dt_proj are counted in the mixer's row" in proc.stdout
    assert 'Not counted' in proc.stdout
    assert 'Deformable attention' not in proc.stdout  # said only for the adapter's


def test_get_flops_reports_the_adapter_and_says_what_it_leaves_out():
    proc = run_tool('tools/analysis_tools/get_flops.py',
                    'configs/mask_rcnn/mask-rcnn_shufflemamba-adapter-toy_fpn_1x_toycoco.py',
                    '--shape', '128', '128')
    assert 'FLOPs (total):' in proc.stdout and 'Params:' in proc.stdout, proc.stdout
    assert 'bilinear sampling and weighted sum (grid_sample) are not' in proc.stdout


def test_benchmark_tool_reports_speed_and_memory():
    proc = run_tool('tools/analysis_tools/benchmark.py', UPERNET, '--shape', '64', '64',
                    '--warmup', '1', '--iters', '2', '--batch-size', '2')
    assert 'images/s' in proc.stdout and 'peak memory' in proc.stdout, proc.stdout


def test_benchmark_train_defaults_to_batch_two_and_batch_one_says_why():
    args = ('tools/analysis_tools/benchmark.py', UPERNET, '--shape', '64', '64', '--warmup',
            '1', '--iters', '1', '--train')
    proc = run_tool(*args)  # batch 2: the head's pooled BatchNorm cannot train on one image
    assert 'train step, whole model, batch 2,' in proc.stdout, proc.stdout
    assert 'images/s' in proc.stdout and 'peak memory' in proc.stdout, proc.stdout
    # UPerHead's pooled 1x1 branch has BatchNorm: one image gives one value per channel
    proc = run_tool(*args, '--batch-size', '1', check=False)
    assert proc.returncode != 0
    assert 'Use --batch-size 2 or more' in proc.stderr, proc.stderr
    assert 'Traceback' not in proc.stderr, proc.stderr
