from .toy_data import TOY_SHAPES, make_toy_classification

__all__ = ['make_toy_classification', 'TOY_SHAPES']
