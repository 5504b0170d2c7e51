from .autocast import AutocastOptimWrapper
from .layer_decay import LayerDecayOptimWrapperConstructor
from .rng_state import RNGStateHook

__all__ = ['LayerDecayOptimWrapperConstructor', 'AutocastOptimWrapper', 'RNGStateHook']
