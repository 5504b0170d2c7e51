from .autocast import AutocastOptimWrapper
from .layer_decay import LayerDecayOptimWrapperConstructor

__all__ = ['LayerDecayOptimWrapperConstructor', 'AutocastOptimWrapper']
