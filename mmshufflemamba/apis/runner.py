"""What tools/train.py and tools/test.py share: config set-up, input checks and building the
runner. Problems are :class:`InputError`, never an exit."""
import datetime
import logging
import os
import os.path as osp
import warnings
import zipfile
from typing import Optional

import torch

from .dataset_config import nested_datasets
from .errors import InputError

__all__ = [
    'prepare_config', 'build_runner', 'init_cpu_distributed', 'finish_distributed',
    'check_data_paths', 'check_checkpoint_file', 'CheckpointMismatchError', 'ToolRunnerMixin'
]


class CheckpointMismatchError(InputError, RuntimeError):
    """A checkpoint whose keys or shapes do not fit the model (``load_from``, tools)."""


class ToolRunnerMixin:
    """What the tools add to the config's runner class (``Runner`` or its ``runner_type``).

    * **Checkpoints load strictly.** ``load_from`` and ``tools/test.py CHECKPOINT`` refuse a
      checkpoint whose keys do not fit the model (missing or unexpected keys, other
      shapes), listing them, instead of mmengine's warning and a model that silently keeps
      random weights. ``load_partial=True`` in the config (``--partial-load``) loads what
      fits on purpose. The backbone's own load hook (position-embedding resize, dropped
      class-token slots) runs first, as always.
    * **SyncBN on CPU.** Distributed training on a machine without CUDA turns SyncBN
      layers into BatchNorm (mmengine's ``revert_sync_batchnorm``) before the model is
      wrapped, with a warning: DistributedDataParallel refuses SyncBN on CPU modules.
    * **The data order is the seed's, with per-rank seeds too.** With
      ``randomness=dict(diff_rank_seed=True)`` mmengine gives the sampler no seed, so the
      sampler draws one from rank 0's numpy stream (``sync_random_seed``, broadcast):
      shared by the ranks, but not ``randomness.seed``, and it changes with every numpy
      draw made before the loader is built. The sampler gets the shared base seed instead
      (the runner's seed minus the rank: the seed of ``diff_rank_seed=False``), so the
      ranks' shards together are one permutation of the dataset, the same as without
      per-rank seeds (as upstream's samplers, whose seed does not depend on the rank). A
      seed in the sampler's own config is kept.
    * **compile=True** compiles the model's ``forward`` (train, val and test) rather than
      mmengine's whole ``train_step``: torch.compile cannot trace mmengine's optimizer
      wrapper (an internal dynamo error with torch 2.13), and the network is where the
      time goes.
    """

    def _maybe_compile(self, target: str) -> None:
        compile_cfg = self.cfg.get('compile')
        if not compile_cfg:
            return
        compile_cfg = {} if compile_cfg is True else dict(compile_cfg)
        from mmengine.model import is_model_wrapper
        model = self.model.module if is_model_wrapper(self.model) else self.model
        if getattr(model, '_forward_compiled', False):
            return
        model.forward = torch.compile(model.forward, **compile_cfg)
        model._forward_compiled = True
        options = compile_cfg or 'torch.compile defaults'
        self.logger.info(f'compile: the model\'s forward is compiled ({options}); the first '
                         f'iterations are slow.')

    @classmethod
    def build_dataloader(cls, dataloader, seed=None, diff_rank_seed=False):
        if (diff_rank_seed and seed is not None and isinstance(dataloader, dict)
                and isinstance(dataloader.get('sampler'), dict)
                and dataloader['sampler'].get('seed') is None):
            from mmengine.dist import get_rank
            # mmengine's set_random_seed gave this rank seed + rank
            dataloader = dict(dataloader,
                              sampler=dict(dataloader['sampler'], seed=seed - get_rank()))
        return super().build_dataloader(dataloader, seed=seed, diff_rank_seed=diff_rank_seed)

    def load_checkpoint(self, filename, map_location='cpu', strict=False,
                        revise_keys=[(r'^module.', '')]):
        partial = bool(self.cfg.get('load_partial', False))
        try:
            return super().load_checkpoint(filename, map_location=map_location,
                                           strict=not partial, revise_keys=revise_keys)
        except RuntimeError as err:
            if partial or 'state_dict' not in str(err):
                raise
            raise CheckpointMismatchError(
                f'checkpoint {filename} does not fit this model '
                f'({type(self.model).__name__}):\n{_summarise_mismatch(str(err))}\nIt is a '
                f'checkpoint of another model, architecture or task. To load only the '
                f'tensors that fit on purpose (e.g. a backbone into a new detector), pass '
                f'--partial-load to the tools or set load_partial=True in the config; the '
                f'skipped keys are then logged as warnings.') from None

    def wrap_model(self, model_wrapper_cfg, model):
        if self.distributed and not torch.cuda.is_available():
            from mmengine.logging import print_log
            from mmengine.model import revert_sync_batchnorm
            if any('SyncBatchNorm' in type(m).__name__ for m in model.modules()):
                print_log('No CUDA here: SyncBN layers are trained as BatchNorm (per '
                          'process statistics) in this CPU distributed run.',
                          logger='current', level=logging.WARNING)
                model = revert_sync_batchnorm(model)
        return super().wrap_model(model_wrapper_cfg, model)


def prepare_config(config: str, launcher: str = 'none', cfg_options: Optional[dict] = None,
                   work_dir: Optional[str] = None):
    """Load a config, apply ``--cfg-options``, and settle ``launcher`` and ``work_dir``."""
    from mmengine.config import Config
    if not osp.isfile(config):
        raise InputError(f'config {config}: no such file.')
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


def _summarise_mismatch(message: str) -> str:
    """mmengine's strict-load message, with long key lists grouped by module."""
    lines = []
    for line in message.splitlines():
        for label in ('unexpected key in source state_dict: ',
                      'missing keys in source state_dict: '):
            if line.startswith(label):
                keys = [k.strip() for k in line[len(label):].split(',') if k.strip()]
                what = 'unexpected keys' if label.startswith('unexpected') else 'missing keys'
                lines.append(f'  {what} ({len(keys)}): {_group_keys(keys)}')
                break
        else:
            if line.startswith('size mismatch'):
                lines.append('  ' + line)
    return '\n'.join(lines) or message


def _group_keys(keys, limit: int = 8) -> str:
    if len(keys) <= limit:
        return ', '.join(keys)
    groups = {}
    for key in keys:
        parts = key.split('.')
        prefix = '.'.join(parts[:2] if parts[0] == 'backbone' else parts[:1])
        groups[prefix] = groups.get(prefix, 0) + 1
    return ', '.join(f'{prefix}.* ({n})' for prefix, n in groups.items())


def build_runner(cfg):
    """The runner for ``cfg``: its ``runner_type`` (default mmengine's ``Runner``) with
    :class:`ToolRunnerMixin`."""
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner
    init_cpu_distributed(cfg)
    base = Runner if 'runner_type' not in cfg else RUNNERS.get(cfg.runner_type)
    if base is None:
        raise InputError(f'runner_type {cfg.runner_type!r} is not registered.')
    runner_cls = type(base.__name__, (ToolRunnerMixin, base), {})
    return runner_cls.from_cfg(cfg)


def finish_distributed() -> None:
    """Shut the process group down after a run that succeeded on every rank.

    Call it once nothing holds the runner. A gloo worker thread lets go of a finished
    collective's tensors after the caller has its result, and letting go of a tensor Python
    has seen takes the GIL: during interpreter finalization that kills the thread inside a
    ``noexcept`` frame, and the process aborts ("terminate called without an active
    exception") after a finished run. The group's destructor joins those threads, but the
    runner's reference cycles hold the DDP wrapper, which holds the group, until a garbage
    collection. So: a barrier (no rank tears down while another is in its last collective),
    ``destroy_process_group``, a collection (the wrapper and its C++ reducer go, while a
    reference held here keeps the group), then that reference dropped last: the Python
    binding releases the GIL while the group's destructor joins the threads, so a thread
    that needs the GIL to finish can (the reducer's destructor would hold it: a hang).
    Not called after a failure: a collective shutdown could hang on ranks that are gone.
    """
    import gc

    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        group = dist.group.WORLD
        dist.destroy_process_group()
        gc.collect()
        del group


def check_data_paths(cfg, loaders=('train_dataloader', 'val_dataloader', 'test_dataloader')):
    """An :class:`InputError` when a dataset's ``data_root`` does not exist."""
    for name in loaders:
        datasets = nested_datasets((cfg.get(name) or {}).get('dataset'))
        for depth, dataset in enumerate(datasets):
            path = name + '.dataset' * (depth + 1)
            root = dataset.get('data_root')
            if root and not osp.isdir(root):
                raise InputError(
                    f"{path}.data_root '{root}' does not exist. Point it at the dataset "
                    f"(e.g. --cfg-options {path}.data_root=PATH), or for the toy configs "
                    f'generate it: python tools/dataset_converters/make_toy_data.py '
                    f'{{cls,ade,coco}} {root}')


def check_checkpoint_file(path: str) -> None:
    """An :class:`InputError` for a missing, truncated or corrupt checkpoint file."""
    if not osp.isfile(path):
        raise InputError(f'checkpoint {path}: no such file.')
    if not zipfile.is_zipfile(path):
        raise InputError(
            f'checkpoint {path} is not a readable torch checkpoint (truncated or corrupt, '
            f'e.g. written by a run that was interrupted while saving it). Use an earlier '
            f'checkpoint of the same run (--resume PATH) or fetch the file again.')
