"""Evaluate a checkpoint with an mmpretrain, mmsegmentation or mmdetection config.

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out OUT] [--tta]
                         [--show] [--show-dir DIR] [--interval N] [--partial-load]
                         [--cfg-options ...] [--launcher pytorch]

The options mean what they mean in the config's codebase (its ``default_scope``):
``--out`` is a directory of predicted label maps for mmseg and a pickle of predictions for
mmdet and mmpretrain; ``--show-dir`` saves painted predictions (every ``--interval``-th
image, default every one); ``--tta`` runs the config's test-time augmentation (a flip TTA
where mmdet/mmpretrain define a default). The checkpoint must fit the model: missing or
unexpected keys are an error that lists them (``--partial-load`` loads what fits on
purpose). Prints the metrics as a last line ``metrics: {...}``.
"""
import argparse
import os
import sys

from mmengine.config import DictAction

from mmshufflemamba.apis import (CODEBASES, InputError, add_result_dump,
                                 apply_test_options, build_runner, check_checkpoint_file,
                                 check_data_paths, finish_distributed, prepare_config)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Test (and evaluate) a model')
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='where the evaluation logs go')
    parser.add_argument('--out', help='; '.join(f'{c.scope}: {c.out}'
                                                for c in CODEBASES.values()))
    parser.add_argument('--out-item', choices=['metrics', 'pred'],
                        help='mmpretrain: write the metrics or the predictions (default) '
                        'to --out')
    parser.add_argument('--show', action='store_true', help='show predictions in a window')
    parser.add_argument('--show-dir', help='directory for the painted predictions')
    parser.add_argument('--interval', type=int, default=1,
                        help='paint every N-th test image (default: every one)')
    parser.add_argument('--wait-time', type=float, default=2, help='seconds per --show')
    parser.add_argument('--tta', action='store_true', help='test-time augmentation')
    parser.add_argument('--partial-load', action='store_true',
                        help='load only the checkpoint tensors that fit the model (the '
                        'others are logged) instead of refusing a checkpoint that does '
                        'not fit')
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
    if args.out_item and not args.out:
        parser.error('--out-item needs --out')
    return args


def main() -> None:
    args = parse_args()
    check_checkpoint_file(args.checkpoint)
    cfg = prepare_config(args.config, args.launcher, args.cfg_options, args.work_dir)
    check_data_paths(cfg, ['test_dataloader'])
    cfg.load_from = args.checkpoint
    if args.partial_load:
        cfg.load_partial = True
    apply_test_options(cfg, show=args.show, show_dir=args.show_dir, wait_time=args.wait_time,
                       interval=args.interval, tta=args.tta, out=args.out)
    runner = build_runner(cfg)
    add_result_dump(runner, args.out, args.out_item)
    metrics = runner.test()
    del runner  # unreferenced: finish_distributed's collection frees it and the process group
    finish_distributed()
    if args.out and args.out_item == 'metrics':
        import mmengine
        mmengine.dump(metrics, args.out)
    print('metrics:', {k: round(float(v), 4) for k, v in metrics.items()})


if __name__ == '__main__':
    try:
        main()
    except InputError as err:  # the message says what is wrong and how to fix it
        sys.exit(str(err))
