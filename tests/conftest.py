"""Fixtures shared by the test files, and the threads of parallel test workers."""
import copy
import os
from typing import Dict

import pytest


def pytest_configure(config):
    """Under pytest-xdist (``-n``, setup.cfg), the workers share the cores: each worker and
    the tools it starts get ``cores // workers`` threads (OMP_NUM_THREADS, when not set),
    instead of every process using every core at once."""
    workers = os.environ.get('PYTEST_XDIST_WORKER_COUNT')
    if workers and 'OMP_NUM_THREADS' not in os.environ:
        import torch
        threads = max(1, (os.cpu_count() or 1) // int(workers))
        os.environ['OMP_NUM_THREADS'] = str(threads)
        torch.set_num_threads(threads)
    _remember_codebase_config_lookups()


def _remember_codebase_config_lookups():
    """Each ``mmseg::``/``mmdet::``/``mmpretrain::`` base of a config makes mmengine look
    the path up among the codebase's ~200 metafiles first (0.1-0.3 s per base on the 2-core
    machine; for a ``_base_/...`` file the answer is always "not a model config", a
    ValueError, and mmengine then takes the file under the codebase's configs). The answer
    for one (package, path) cannot change while the tests run, so this process keeps it:
    the configs that test files parse in process (dozens share the same few bases) pay
    for each lookup once. Tools the tests start parse as users' do."""
    from mmengine.config import config as mm_config
    lookup = mm_config._get_external_cfg_path
    answers = {}

    def remembered(package_path: str, cfg_path: str) -> str:
        key = (package_path, cfg_path)
        if key not in answers:
            try:
                answers[key] = (lookup(package_path, cfg_path), None)
            except ValueError as error:  # what mmengine's caller catches
                answers[key] = (None, error.args)
        path, error = answers[key]
        if error is not None:
            raise ValueError(*error)
        return path

    mm_config._get_external_cfg_path = remembered


@pytest.fixture(autouse=True)
def _restore_default_scope():
    """Each test starts from the default scope the previous one found.

    Building a config's model (``build_model_from_config``, ``init_default_scope``) sets
    mmengine's process-wide ``DefaultScope``; without this a test that builds an mmdet
    model would change the messages a later test sees (the backbone's size hint names the
    codebase in scope).
    """
    from mmengine.registry import DefaultScope
    saved = copy.copy(DefaultScope._instance_dict)
    yield
    DefaultScope._instance_dict = saved


@pytest.fixture
def kernel_packages(monkeypatch, tmp_path):
    """Installs stand-ins of mamba-ssm / causal-conv1d (``tests/stand_ins.py``): call it with
    :func:`stand_ins.install`'s keywords. Every verdict and once-only warning of the
    package is forgotten before and after, and the stand-ins' modules are dropped after."""
    import importlib
    import sys

    import stand_ins
    conv, mamba_ssm_scan, scan_module, upstream = (
        importlib.import_module(f'mmshufflemamba.ops.{name}')
        for name in ('causal_conv1d', 'mamba_ssm_scan', 'selective_scan', 'upstream_kernels'))
    caches = (mamba_ssm_scan._imported, mamba_ssm_scan.verify, conv._imported, conv.verify,
              conv._warn_once, scan_module._warn_once, upstream.installed_version)

    def forget():
        for cache in caches:
            cache.cache_clear()

    forget()
    yield lambda **packages: stand_ins.install(monkeypatch, tmp_path / 'site', **packages)
    for name in stand_ins.NAMES:
        sys.modules.pop(name, None)
    forget()


@pytest.fixture(scope='session')
def untrained_checkpoints(tmp_path_factory) -> Dict[str, str]:
    """Initialised, untrained checkpoints of the toy configs, written once per test run in
    one subprocess (the first worker that needs them writes them, under a lock, for all):
    ``{'seg': path, 'det': path, 'cls': path}`` (UperNet, Mask R-CNN, classifier). A child
    config that changes only data or schedule loads them as well."""
    from filelock import FileLock
    from helpers import CLS, MASK_RCNN, UPERNET, save_untrained_checkpoints
    # the run's base directory, shared by the xdist workers (each has its own below it)
    root = tmp_path_factory.getbasetemp()
    if os.environ.get('PYTEST_XDIST_WORKER'):
        root = root.parent
    root = root / 'untrained'
    configs = {'seg': UPERNET, 'det': MASK_RCNN, 'cls': CLS}
    paths = {task: str(root / f'{task}.pth') for task in configs}
    root.mkdir(exist_ok=True)
    with FileLock(str(root / '.lock')):
        if not (root / 'done').exists():
            save_untrained_checkpoints(
                *[v for task in configs for v in (configs[task], paths[task])])
            (root / 'done').touch()
    return paths
