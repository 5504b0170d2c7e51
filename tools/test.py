"""Evaluate a checkpoint with an mmpretrain, mmsegmentation or mmdetection config.

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--cfg-options ...]
                         [--launcher pytorch]

Prints the metrics as a last line ``metrics: {...}``.
"""
import argparse
import os

from mmengine.config import DictAction

from mmshufflemamba.utils import (build_runner, check_checkpoint_file, check_data_paths,
                                  finish_distributed, prepare_config)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Test (and evaluate) a model')
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='where the evaluation logs go')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override config entries, e.g. test_dataloader.batch_size=1')
    parser.add_argument(
        '--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def main() -> None:
    args = parse_args()
    check_checkpoint_file(args.checkpoint)
    cfg = prepare_config(args.config, args.launcher, args.cfg_options, args.work_dir)
    check_data_paths(cfg, ['test_dataloader'])
    cfg.load_from = args.checkpoint
    metrics = build_runner(cfg).test()
    finish_distributed()
    print('metrics:', {k: round(float(v), 4) for k, v in metrics.items()})


if __name__ == '__main__':
    main()
