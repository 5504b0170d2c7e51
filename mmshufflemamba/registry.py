"""The package's registries: children of mmengine's root registries.

Configs of any codebase refer to our modules as ``type='mmshufflemamba.<Name>'`` (with
``custom_imports=dict(imports=['mmshufflemamba'])``): mmengine resolves the ``mmshufflemamba``
scope from the root registry down to these children, whatever the config's
``default_scope`` (mmpretrain, mmseg or mmdet). ``locations`` makes a lookup import the
modules that register themselves, so registration never depends on the working directory
(and the classification heads, which import mmpretrain, are imported only then).
"""
from mmengine.registry import DATASETS as MMENGINE_DATASETS
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import \
    OPTIM_WRAPPER_CONSTRUCTORS as MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS
from mmengine.registry import HOOKS as MMENGINE_HOOKS
from mmengine.registry import OPTIM_WRAPPERS as MMENGINE_OPTIM_WRAPPERS
from mmengine.registry import PARAM_SCHEDULERS as MMENGINE_PARAM_SCHEDULERS
from mmengine.registry import Registry

__all__ = [
    'MODELS', 'DATASETS', 'OPTIM_WRAPPER_CONSTRUCTORS', 'OPTIM_WRAPPERS', 'HOOKS',
    'PARAM_SCHEDULERS'
]

MODELS = Registry(
    'model',
    parent=MMENGINE_MODELS,
    scope='mmshufflemamba',
    locations=['mmshufflemamba.models', 'mmshufflemamba.models.heads'])
DATASETS = Registry(
    'dataset',
    parent=MMENGINE_DATASETS,
    scope='mmshufflemamba',
    locations=['mmshufflemamba.datasets'])
OPTIM_WRAPPER_CONSTRUCTORS = Registry(
    'optimizer wrapper constructor',
    parent=MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS,
    scope='mmshufflemamba',
    locations=['mmshufflemamba.engine'])
OPTIM_WRAPPERS = Registry(
    'optim wrapper',
    parent=MMENGINE_OPTIM_WRAPPERS,
    scope='mmshufflemamba',
    locations=['mmshufflemamba.engine'])
HOOKS = Registry(
    'hook', parent=MMENGINE_HOOKS, scope='mmshufflemamba', locations=['mmshufflemamba.engine'])
PARAM_SCHEDULERS = Registry(
    'parameter scheduler',
    parent=MMENGINE_PARAM_SCHEDULERS,
    scope='mmshufflemamba',
    locations=['mmshufflemamba.engine'])
