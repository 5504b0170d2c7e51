"""What tools/train.py and tools/test.py share: config set-up and building the runner."""
import datetime
import os
import zipfile
import os.path as osp
import warnings
from typing import Optional

import torch

__all__ = [
    'prepare_config', 'build_runner', 'init_cpu_distributed', 'finish_distributed',
    'check_data_paths',
    'check_checkpoint_file'
]


def prepare_config(config: str, launcher: str = 'none', cfg_options: Optional[dict] = None,
                   work_dir: Optional[str] = None):
    """Load a config, apply ``--cfg-options``, and settle ``launcher`` and ``work_dir``."""
    from mmengine.config import Config
    if not osp.isfile(config):
        raise SystemExit(f'config {config}: no such file.')
    cfg = Config.fromfile(config)
    cfg.launcher = launcher
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(config))[0])
    return cfg


def init_cpu_distributed(cfg) -> None:
    """Start the process group for ``--launcher pytorch`` on a machine without CUDA.

    mmengine 0.10.7 calls ``torch.cuda.set_device`` for this launcher, which fails without
    a GPU; the runner skips its own set-up once a group exists. NCCL cannot run on CPU,
    so a config asking for it is switched to gloo (with a warning). ``dist_cfg.timeout``
    (seconds) bounds how long a rank waits for the others. The model wrapper gets
    ``device_ids=None``, which DistributedDataParallel needs for CPU modules.
    """
    if cfg.launcher != 'pytorch' or torch.cuda.is_available():
        return
    import torch.distributed as dist
    if cfg.get('model_wrapper_cfg') is None:
        cfg.model_wrapper_cfg = dict(
            type='MMDistributedDataParallel', broadcast_buffers=False,
            find_unused_parameters=cfg.get('find_unused_parameters', False))
    cfg.model_wrapper_cfg.setdefault('device_ids', None)
    if dist.is_initialized():
        return
    dist_cfg = dict(cfg.get('env_cfg', {}).get('dist_cfg', {}))
    backend = dist_cfg.pop('backend', 'gloo')
    if backend == 'nccl':
        warnings.warn('env_cfg.dist_cfg.backend is nccl, which needs GPUs; using gloo on '
                      'this CPU-only machine. Set env_cfg.dist_cfg.backend=gloo to silence '
                      'this.')
        backend = 'gloo'
    timeout = dist_cfg.pop('timeout', None)
    if timeout is not None:
        dist_cfg['timeout'] = datetime.timedelta(seconds=timeout)
    dist.init_process_group(backend=backend, rank=int(os.environ['RANK']),
                            world_size=int(os.environ['WORLD_SIZE']), **dist_cfg)


def build_runner(cfg):
    """The mmengine runner for ``cfg`` (``runner_type`` honoured)."""
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner
    init_cpu_distributed(cfg)
    return Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)


def finish_distributed() -> None:
    """Shut the process group down after a run that succeeded on every rank.

    Without it, gloo's worker threads can outlive the interpreter and abort the process at
    exit (SIGABRT, "terminate called without an active exception") after a finished run.
    Not called after a failure: a collective shutdown could hang on ranks that are gone.
    """
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def check_data_paths(cfg, loaders=('train_dataloader', 'val_dataloader', 'test_dataloader')):
    """Stop with a clear message when a dataset's ``data_root`` does not exist."""
    for name in loaders:
        dataset = (cfg.get(name) or {}).get('dataset')
        path = f'{name}.dataset'
        while dataset:  # wrappers (RepeatDataset, ...) nest the real dataset
            root = dataset.get('data_root')
            if root and not osp.isdir(root):
                raise SystemExit(
                    f"{path}.data_root '{root}' does not exist. Point it at the dataset "
                    f"(e.g. --cfg-options {path}.data_root=PATH), or for the toy configs "
                    f'generate it: python tools/dataset_converters/make_toy_data.py '
                    f'{{cls,ade,coco}} {root}')
            dataset, path = dataset.get('dataset'), path + '.dataset'


def check_checkpoint_file(path: str) -> None:
    """Stop with a clear message for a missing, truncated or corrupt checkpoint file."""
    if not osp.isfile(path):
        raise SystemExit(f'checkpoint {path}: no such file.')
    if not zipfile.is_zipfile(path):
        raise SystemExit(
            f'checkpoint {path} is not a readable torch checkpoint (truncated or corrupt, '
            f'e.g. written by a run that was interrupted while saving it). Use an earlier '
            f'checkpoint of the same run (--resume PATH) or fetch the file again.')
