from .toy_data import (TOY_ADE_LABELS, TOY_COCO_CLASSES, TOY_SHAPES, make_toy_ade20k,
                       make_toy_classification, make_toy_coco)

__all__ = [
    'make_toy_classification', 'make_toy_ade20k', 'make_toy_coco', 'TOY_SHAPES',
    'TOY_ADE_LABELS', 'TOY_COCO_CLASSES'
]
