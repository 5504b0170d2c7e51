from .autocast import AutocastOptimWrapper
from .layer_decay import LayerDecayOptimWrapperConstructor
from .raw_weights import LoadRawWeightsHook
from .rng_state import RNGStateHook
from .timm_cosine import TimmCosineLR

__all__ = [
    'LayerDecayOptimWrapperConstructor', 'AutocastOptimWrapper', 'RNGStateHook',
    'LoadRawWeightsHook', 'TimmCosineLR'
]
