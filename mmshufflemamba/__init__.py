"""mmshufflemamba: plain Vision Mamba backbones with stochastic layer-wise shuffle for
OpenMMLab. Importing it needs only torch and mmengine; pieces that build on mmpretrain,
mmseg or mmdet import them lazily."""
from .utils import allow_mmengine_checkpoint_globals
from .version import __version__
from . import datasets, engine, models, ops  # noqa: E402,F401  (registers the modules)
from .registry import DATASETS, MODELS, OPTIM_WRAPPER_CONSTRUCTORS  # noqa: E402

allow_mmengine_checkpoint_globals()

__all__ = [
    '__version__', 'MODELS', 'DATASETS', 'OPTIM_WRAPPER_CONSTRUCTORS', 'ops', 'models',
    'datasets', 'engine'
]
