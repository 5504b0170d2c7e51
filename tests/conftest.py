"""Fixtures shared by the test files."""
import copy
from typing import Dict

import pytest


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


@pytest.fixture(scope='session')
def untrained_checkpoints(tmp_path_factory) -> Dict[str, str]:
    """Initialised, untrained checkpoints of the toy configs, written once per session in
    one subprocess: ``{'seg': path, 'det': path, 'cls': path}`` (UperNet, Mask R-CNN,
    classifier). A child config that changes only data or schedule loads them as well."""
    from helpers import CLS, MASK_RCNN, UPERNET, save_untrained_checkpoints
    root = tmp_path_factory.mktemp('untrained')
    configs = {'seg': UPERNET, 'det': MASK_RCNN, 'cls': CLS}
    paths = {task: str(root / f'{task}.pth') for task in configs}
    save_untrained_checkpoints(*[v for task in configs for v in (configs[task], paths[task])])
    return paths
