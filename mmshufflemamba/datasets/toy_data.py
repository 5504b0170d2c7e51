"""Small procedurally drawn datasets in the real on-disk layouts (no downloads needed).

``make_toy_classification`` writes an ImageNet-style folder dataset::

    root/
      classes.txt                 one class name per line
      meta/train.txt, meta/val.txt  "<class>/<file>.png <label>" per line
      train/<class>/*.png, val/<class>/*.png

Each class is one shape (disk, square, triangle, cross, ring, ...) drawn in one hue on a
noisy background, at a random position and size, so the labels are learnable but not
constant images.

``make_toy_ade20k`` writes the ADE20K layout (``images/{training,validation}/*.jpg``,
``annotations/{training,validation}/*.png``) with its own five classes
(``TOY_ADE_CLASSES``: background, disk, square, triangle, cross): label values 1..5, and
0 = "other" on a thin frame, which ``reduce_zero_label`` turns into the ignore index, as
ADE20K's 0 is. A noisy grey background and up to three shapes, each class in its own hue.

``make_toy_coco`` writes the COCO instances layout (``annotations/instances_{split}.json``
with polygon segmentations, ``{split}/*.jpg``) of the same kind of scenes, three classes
(``TOY_COCO_CLASSES``).

Each dataset declares its classes and a palette made of the colours it draws them in
(``TOY_*_CLASSES`` / ``TOY_*_PALETTE``); the toy configs carry the same ``metainfo``, so
evaluation tables list these classes only and pictures colour them as they are drawn.
"""
import os
import os.path as osp
from typing import List

import numpy as np

__all__ = [
    'make_toy_classification', 'make_toy_ade20k', 'make_toy_coco', 'TOY_SHAPES',
    'TOY_CLS_PALETTE', 'TOY_ADE_CLASSES', 'TOY_ADE_PALETTE', 'TOY_ADE_LABELS',
    'TOY_COCO_CLASSES', 'TOY_COCO_PALETTE'
]

TOY_SHAPES = ('disk', 'square', 'triangle', 'cross', 'ring', 'hbar', 'vbar', 'diamond')
_HUES = np.array([[230, 60, 50], [60, 200, 70], [50, 90, 230], [230, 210, 40],
                  [200, 60, 220], [40, 210, 220], [240, 140, 30], [150, 150, 150]],
                 dtype=np.float32)
_BACKGROUND_GREY = 110  # mean of the noisy background of every toy image

# the colour each toy class is drawn in, class-for-class with TOY_SHAPES
TOY_CLS_PALETTE = tuple(tuple(int(c) for c in hue) for hue in _HUES)


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
    img = rng.normal(_BACKGROUND_GREY, 25, (size, size, 3)).astype(np.float32)
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
                            img_size: int = 64,
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


# The toy ADE20K-layout classes: label value i + 1 on disk for class i (0 = "other", the
# ignored frame), so that reduce_zero_label maps the file's values onto these classes.
TOY_ADE_CLASSES = ('background', 'disk', 'square', 'triangle', 'cross')
TOY_ADE_PALETTE = ((_BACKGROUND_GREY, ) * 3, ) + TOY_CLS_PALETTE[:4]
TOY_ADE_LABELS = {name: i + 1 for i, name in enumerate(TOY_ADE_CLASSES)}


def _scene(size: int, shapes: List[str], rng: np.random.Generator, max_objects: int = 3):
    """Noisy background with 1..max_objects shapes that do not touch each other.

    Returns the image and a list of ``(label, mask)``.
    """
    img = rng.normal(_BACKGROUND_GREY, 20, (size, size, 3)).astype(np.float32)
    occupied = np.zeros((size, size), bool)
    objects = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        for _attempt in range(20):
            label = int(rng.integers(len(shapes)))
            r = rng.uniform(0.12, 0.22) * size
            cy, cx = rng.uniform(r, size - r, 2)
            mask = _shape_mask(shapes[label], size, cy, cx, r)
            halo = _shape_mask('square', size, cy, cx, r + 2)
            if mask.sum() >= 4 and not (halo & occupied).any():
                break
        else:
            continue
        occupied |= mask
        img[mask] = _HUES[label] + rng.normal(0, 12, (int(mask.sum()), 3))
        objects.append((label, mask))
    return np.clip(img, 0, 255).astype(np.uint8), objects


def make_toy_ade20k(root: str, num_train: int = 48, num_val: int = 12, img_size: int = 64,
                    seed: int = 0) -> None:
    """Write an ADE20K-layout dataset (see module docstring) under ``root``."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    shapes = list(TOY_ADE_CLASSES[1:])
    for split, count in (('training', num_train), ('validation', num_val)):
        os.makedirs(osp.join(root, 'images', split), exist_ok=True)
        os.makedirs(osp.join(root, 'annotations', split), exist_ok=True)
        for i in range(count):
            img, objects = _scene(img_size, shapes, rng)
            seg = np.full((img_size, img_size), TOY_ADE_LABELS['background'], np.uint8)
            for label, mask in objects:
                seg[mask] = TOY_ADE_LABELS[shapes[label]]
            seg[:2], seg[-2:], seg[:, :2], seg[:, -2:] = 0, 0, 0, 0  # "other": ignored
            name = f'ADE_{split}_{i:08d}'
            Image.fromarray(img).save(osp.join(root, 'images', split, name + '.jpg'),
                                      quality=95)
            Image.fromarray(seg).save(osp.join(root, 'annotations', split, name + '.png'))


def _mask_polygon(mask: np.ndarray) -> List[float]:
    """A polygon around a binary mask: its convex hull (exact for the convex shapes)."""
    ys, xs = np.nonzero(mask)
    points = sorted(set(zip(xs.tolist(), ys.tolist())))
    corners = []
    for x, y in points:  # pixel corners so the hull covers whole pixels
        corners += [(x, y), (x + 1, y), (x, y + 1), (x + 1, y + 1)]
    corners = sorted(set(corners))

    def cross(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower, upper = [], []
    for p in corners:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    for p in reversed(corners):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    hull = lower[:-1] + upper[:-1]
    return [float(v) for point in hull for v in point]


TOY_COCO_CLASSES = ('disk', 'square', 'triangle')
TOY_COCO_PALETTE = TOY_CLS_PALETTE[:3]


def make_toy_coco(root: str, num_train: int = 32, num_val: int = 8, img_size: int = 128,
                  seed: int = 0) -> None:
    """Write a COCO-instances-layout dataset of disks, squares and triangles."""
    import json

    from PIL import Image
    rng = np.random.default_rng(seed)
    shapes = list(TOY_COCO_CLASSES)
    os.makedirs(osp.join(root, 'annotations'), exist_ok=True)
    categories = [dict(id=i + 1, name=name, supercategory='shape')
                  for i, name in enumerate(shapes)]
    for split, count in (('train2017', num_train), ('val2017', num_val)):
        os.makedirs(osp.join(root, split), exist_ok=True)
        images, annotations = [], []
        for i in range(count):
            img, objects = _scene(img_size, shapes, rng, max_objects=4)
            file_name = f'{i:012d}.jpg'
            Image.fromarray(img).save(osp.join(root, split, file_name), quality=95)
            image_id = i + 1
            images.append(dict(id=image_id, file_name=file_name, height=img_size,
                               width=img_size))
            for label, mask in objects:
                ys, xs = np.nonzero(mask)
                x0, y0 = float(xs.min()), float(ys.min())
                w, h = float(xs.max() + 1) - x0, float(ys.max() + 1) - y0
                annotations.append(dict(
                    id=len(annotations) + 1, image_id=image_id, category_id=label + 1,
                    bbox=[x0, y0, w, h], area=float(mask.sum()), iscrowd=0,
                    segmentation=[_mask_polygon(mask)]))
        with open(osp.join(root, 'annotations', f'instances_{split}.json'), 'w') as f:
            json.dump(dict(images=images, annotations=annotations, categories=categories), f)
