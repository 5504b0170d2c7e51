from .toy_data import (TOY_ADE_CLASSES, TOY_ADE_LABELS, TOY_ADE_PALETTE, TOY_CLS_PALETTE,
                       TOY_COCO_CLASSES, TOY_COCO_PALETTE, TOY_SHAPES, make_toy_ade20k,
                       make_toy_classification, make_toy_coco)

__all__ = [
    'make_toy_classification', 'make_toy_ade20k', 'make_toy_coco', 'TOY_SHAPES',
    'TOY_CLS_PALETTE', 'TOY_ADE_CLASSES', 'TOY_ADE_PALETTE', 'TOY_ADE_LABELS',
    'TOY_COCO_CLASSES', 'TOY_COCO_PALETTE'
]
