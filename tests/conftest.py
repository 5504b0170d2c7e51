import os.path as osp
import sys

import pytest

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def pytest_configure(config):
    config.addinivalue_line('markers', 'slow: long end-to-end runs (deselect with -m "not slow")')


@pytest.fixture
def repo_root() -> str:
    return ROOT


@pytest.fixture
def python() -> str:
    return sys.executable
