"""Small procedurally drawn datasets in the real on-disk layouts (no downloads needed).

``make_toy_classification`` writes an ImageNet-style folder dataset::

    root/
      classes.txt                 one class name per line
      meta/train.txt, meta/val.txt  "<class>/<file>.png <label>" per line
      train/<class>/*.png, val/<class>/*.png

Each class is one shape (disk, square, triangle, cross, ring, ...) drawn in one hue on a
noisy background, at a random position and size, so the labels are learnable but not
constant images.
"""
import os
import os.path as osp
from typing import List

import numpy as np

__all__ = ['make_toy_classification', 'TOY_SHAPES']

TOY_SHAPES = ('disk', 'square', 'triangle', 'cross', 'ring', 'hbar', 'vbar', 'diamond')
_HUES = np.array([[230, 60, 50], [60, 200, 70], [50, 90, 230], [230, 210, 40],
                  [200, 60, 220], [40, 210, 220], [240, 140, 30], [150, 150, 150]],
                 dtype=np.float32)


def _shape_mask(shape: str, size: int, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    dy, dx = yy - cy, xx - cx
    if shape == 'disk':
        return dy**2 + dx**2 <= r**2
    if shape == 'square':
        return (np.abs(dy) <= r) & (np.abs(dx) <= r)
    if shape == 'triangle':
        return (dy <= r) & (dy >= -r) & (np.abs(dx) <= (dy + r) / 2)
    if shape == 'cross':
        return ((np.abs(dy) <= r / 3) & (np.abs(dx) <= r)) | (
            (np.abs(dx) <= r / 3) & (np.abs(dy) <= r))
    if shape == 'ring':
        d2 = dy**2 + dx**2
        return (d2 <= r**2) & (d2 >= (0.55 * r)**2)
    if shape == 'hbar':
        return (np.abs(dy) <= r / 3) & (np.abs(dx) <= r)
    if shape == 'vbar':
        return (np.abs(dx) <= r / 3) & (np.abs(dy) <= r)
    if shape == 'diamond':
        return np.abs(dy) + np.abs(dx) <= r
    raise ValueError(f'unknown shape {shape!r}; choose from {TOY_SHAPES}')


def draw_toy_image(label: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """One ``(size, size, 3)`` uint8 image of class ``label``."""
    img = rng.normal(110, 25, (size, size, 3)).astype(np.float32)
    r = rng.uniform(0.18, 0.3) * size
    cy, cx = rng.uniform(r, size - r, 2)
    mask = _shape_mask(TOY_SHAPES[label], size, cy, cx, r)
    color = _HUES[label] + rng.normal(0, 15, 3)
    img[mask] = color + rng.normal(0, 10, (int(mask.sum()), 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def make_toy_classification(root: str,
                            num_classes: int = 4,
                            train_per_class: int = 32,
                            val_per_class: int = 8,
                            img_size: int = 32,
                            seed: int = 0) -> List[str]:
    """Write the dataset under ``root`` (see module docstring). Returns the class names."""
    from PIL import Image
    if not 2 <= num_classes <= len(TOY_SHAPES):
        raise ValueError(f'num_classes must be in [2, {len(TOY_SHAPES)}]; got {num_classes}.')
    rng = np.random.default_rng(seed)
    classes = list(TOY_SHAPES[:num_classes])
    os.makedirs(osp.join(root, 'meta'), exist_ok=True)
    with open(osp.join(root, 'classes.txt'), 'w') as f:
        f.write('\n'.join(classes) + '\n')
    for split, per_class in (('train', train_per_class), ('val', val_per_class)):
        lines = []
        for label, name in enumerate(classes):
            os.makedirs(osp.join(root, split, name), exist_ok=True)
            for i in range(per_class):
                rel = f'{name}/{name}_{i:05d}.png'
                Image.fromarray(draw_toy_image(label, img_size, rng)).save(
                    osp.join(root, split, rel))
                lines.append(f'{rel} {label}')
        with open(osp.join(root, 'meta', f'{split}.txt'), 'w') as f:
            f.write('\n'.join(lines) + '\n')
    return classes

