"""Train a model from an mmpretrain, mmsegmentation or mmdetection config.

The codebase comes from the config's ``default_scope``; nothing here is specific to one.

    python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp]
                          [--auto-scale-lr] [--partial-load] [--cfg-options key=value ...]
                          [--launcher pytorch]

``--auto-scale-lr`` scales the config's lr by the real total batch (processes x
``train_dataloader.batch_size``) over ``auto_scale_lr.base_batch_size``, the total batch the
config's lr is written for (mmengine's ``Runner.scale_lr``); without the flag the lr is the
config's whatever the number of processes.

A ``load_from`` checkpoint must fit the model: missing or unexpected keys are an error
that lists them (``--partial-load`` loads what fits on purpose). On a machine without CUDA,
a multi-process run trains SyncBN layers as BatchNorm (with a warning).
"""
import argparse
import os
import sys

from mmengine.config import DictAction

from mmshufflemamba.apis import (InputError, build_runner, check_checkpoint_file,
                                 check_data_paths, finish_distributed, prepare_config)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Train a model')
    parser.add_argument('config', help='config file')
    parser.add_argument('--work-dir', help='where logs and checkpoints go')
    parser.add_argument(
        '--resume',
        nargs='?',
        type=str,
        const='auto',
        help='resume from CKPT, or from the latest checkpoint in the work dir if no '
        'path is given')
    parser.add_argument('--amp', action='store_true',
                        help='mixed precision: AmpOptimWrapper (float16, loss scaling) on '
                        'GPUs, bfloat16 autocast on CPU')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help='scale the lr by (processes x train_dataloader.batch_size) / '
                        'auto_scale_lr.base_batch_size, as upstream scales it by the real '
                        'world size')
    parser.add_argument('--partial-load', action='store_true',
                        help='load_from: load only the tensors that fit the model (the '
                        'others are logged) instead of refusing a checkpoint that does not '
                        'fit')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override config entries, e.g. train_cfg.max_iters=10 randomness.seed=0')
    parser.add_argument(
        '--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none')
    # torch.distributed.launch passes --local-rank / --local_rank; torchrun sets LOCAL_RANK
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def enable_amp(cfg) -> None:
    """Switch the optimizer wrapper to mixed precision for the machine at hand."""
    import torch
    wrapper = cfg.optim_wrapper.get('type', 'OptimWrapper')
    if wrapper in ('AmpOptimWrapper', 'mmshufflemamba.AutocastOptimWrapper'):
        return
    if wrapper != 'OptimWrapper':
        raise InputError(f'--amp needs optim_wrapper.type OptimWrapper; the config uses '
                         f'{wrapper}.')
    if torch.cuda.is_available():
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')
    else:  # mmengine's AmpOptimWrapper needs a GPU
        cfg.optim_wrapper.type = 'mmshufflemamba.AutocastOptimWrapper'
        cfg.optim_wrapper.setdefault('dtype', 'bfloat16')


def enable_auto_scale_lr(cfg) -> None:
    """``--auto-scale-lr``: turn on mmengine's lr scaling, which needs the batch the lr
    is written for."""
    auto_scale_lr = cfg.get('auto_scale_lr') or {}
    if auto_scale_lr.get('base_batch_size') is None:
        raise InputError(
            f'--auto-scale-lr: the config {cfg.filename} has no auto_scale_lr.base_batch_size '
            f'(the total batch, GPUs x train_dataloader.batch_size, its lr is written for). '
            f'Add auto_scale_lr = dict(enable=False, base_batch_size=N) to it, or pass '
            f'--cfg-options auto_scale_lr.base_batch_size=N.')
    cfg.auto_scale_lr = dict(auto_scale_lr, enable=True)


def keep_seed_on_resume(cfg) -> None:
    """``--resume`` of a config that sets no ``randomness.seed``: use the interrupted run's.

    Such a run draws its seed at random. mmengine builds the data sampler with a fresh seed
    before it reads the checkpoint (and puts the checkpoint's seed back only after), so the
    resumed run would see the data in another order than the run it continues.
    """
    randomness = cfg.get('randomness') or {}
    if randomness.get('seed') is not None:
        return
    import torch
    # mmap: only the pickled structure is read here, not the tensors
    checkpoint = torch.load(cfg.load_from, map_location='cpu', mmap=True, weights_only=True)
    seed = checkpoint.get('meta', {}).get('seed')
    if seed is not None:
        cfg.randomness = dict(randomness, seed=seed)


def main() -> None:
    args = parse_args()
    cfg = prepare_config(args.config, args.launcher, args.cfg_options, args.work_dir)
    if args.amp:
        enable_amp(cfg)
    if args.auto_scale_lr:
        enable_auto_scale_lr(cfg)
    if args.resume == 'auto':
        from mmengine.runner import find_latest_checkpoint
        cfg.resume = True
        cfg.load_from = find_latest_checkpoint(cfg.work_dir)  # None: start afresh
    elif args.resume is not None:
        cfg.resume = True
        cfg.load_from = args.resume
    if cfg.get('load_from'):
        check_checkpoint_file(cfg.load_from)
        if cfg.get('resume'):
            keep_seed_on_resume(cfg)
    if args.partial_load:
        cfg.load_partial = True
    check_data_paths(cfg, ['train_dataloader'] + (['val_dataloader'] if cfg.get('val_cfg')
                                                   is not None else []))
    build_runner(cfg).train()
    finish_distributed()


if __name__ == '__main__':
    try:
        main()
    except InputError as err:  # the message says what is wrong and how to fix it
        sys.exit(str(err))
