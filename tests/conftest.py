"""Fixtures shared by the test files."""
import copy

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
