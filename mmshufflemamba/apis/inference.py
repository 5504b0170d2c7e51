"""One image through a config's model with the codebase's own inferencer
(``demo/image_demo.py``), and what the demo says about it."""
import contextlib
import io
import os.path as osp
from typing import List, Optional, Tuple

import numpy as np

from .dataset_config import innermost_dataset
from .errors import InputError

__all__ = ['load_rgb', 'describe_preprocessing', 'dataset_meta_from_config',
           'checkpoint_has_classes', 'segment', 'detect', 'classify']

# what the inferencers' pipelines do not use for a bare image
NOT_PREPROCESSING = ('LoadImageFromFile', 'LoadAnnotations', 'PackSegInputs',
                     'PackDetInputs', 'PackInputs')


def load_rgb(path: str) -> Tuple[np.ndarray, str]:
    """``path`` as an RGB uint8 array, and a note on what was converted."""
    from PIL import Image, ImageOps
    if not osp.isfile(path):
        raise InputError(f'image {path}: no such file.')
    try:
        with Image.open(path) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
    except (OSError, ValueError, SyntaxError) as err:  # PIL's errors for bad files
        raise InputError(f'image {path}: cannot read it as an image ({err}). Give a file '
                         f'that Pillow reads (JPEG, PNG, BMP, TIFF, WebP, GIF, ...).')
    mode, note = img.mode, img.mode
    if mode == 'P' and 'transparency' in img.info:
        img = img.convert('RGBA')
    if img.mode in ('RGBA', 'LA', 'PA', 'RGBa', 'La'):
        rgba = img.convert('RGBA')
        white = Image.new('RGBA', rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
        note += ' -> RGB over white'
    elif img.mode in ('I', 'I;16', 'I;16B', 'I;16L', 'F'):  # 16-bit / float grayscale
        values = np.asarray(img, dtype=np.float64)
        low, high = float(values.min()), float(values.max())
        values = (values - low) / (high - low) * 255 if high > low else values * 0
        img = Image.fromarray(values.round().astype(np.uint8))
        note += ' -> 8-bit (min..max)'
    if img.mode != 'RGB':
        img = img.convert('RGB')
        if mode != 'RGB' and '->' not in note:
            note += ' -> RGB'
    return np.ascontiguousarray(np.asarray(img)), note


def describe_preprocessing(cfg, codebase) -> str:
    """The test pipeline's transforms and the data preprocessor's padding, in words."""
    steps = []
    for transform in cfg.test_dataloader.dataset.get('pipeline', []):
        if transform['type'] in NOT_PREPROCESSING:
            continue
        args = ', '.join(f'{k}={v!r}' for k, v in transform.items()
                         if k not in ('type', 'backend_args', 'backend', 'interpolation'))
        steps.append(f"{transform['type']}({args})")
    if codebase.pad_divisor is not None:
        divisor = cfg.model.get('data_preprocessor') or {}
        for key in codebase.pad_divisor:
            divisor = (divisor or {}).get(key)
        steps.append(f'pad to a multiple of {divisor}' if divisor else 'no padding')
    if codebase.inference_mode:
        steps.append(f"{cfg.model.get('test_cfg', {}).get('mode', 'whole')} inference")
    return ' -> '.join(steps) or 'none'


def dataset_meta_from_config(cfg) -> Optional[dict]:
    """Classes (and palette) of the config's test set: the dataset class's METAINFO
    updated with the config's ``metainfo``, as the dataset itself would have them; None
    when the config names no classes."""
    from mmengine.registry import DATASETS

    dataset = innermost_dataset(cfg.test_dataloader.dataset)
    with DATASETS.switch_scope_and_registry(cfg.get('default_scope')) as registry:
        dataset_cls = registry.get(dataset['type'])
    meta = dict(getattr(dataset_cls, 'METAINFO', {}) or {})
    meta.update(dataset.get('metainfo') or {})
    if not meta.get('classes'):
        return None
    return {k: list(v) for k, v in meta.items() if k in ('classes', 'palette')}


def checkpoint_has_classes(checkpoint: str) -> bool:
    """Whether the checkpoint's meta names the classes it was trained on."""
    import torch
    try:
        ckpt = torch.load(checkpoint, map_location='cpu', mmap=True)
    except RuntimeError:  # not a zip checkpoint: mmap is not possible
        ckpt = torch.load(checkpoint, map_location='cpu')
    meta = ckpt.get('meta', {}) if isinstance(ckpt, dict) else {}
    return bool((meta.get('dataset_meta') or {}).get('classes') or meta.get('CLASSES'))


def _quiet():
    """Keep the inferencers' progress bars (written without a final newline) out of the
    printed summary."""
    return contextlib.redirect_stdout(io.StringIO())


# The codebases' inference on one image file ``image`` (written by the caller; BGR for the
# model, RGB for drawing), ``meta`` the classes to use when the checkpoint has none, and
# ``options`` the demo's ``opacity``/``score_thr``/``topk``. Each returns the RGB picture
# and the summary lines.

def segment(cfg, checkpoint: str, image: str, device: str, meta: Optional[dict],
            options) -> Tuple[np.ndarray, List[str]]:
    """mmseg's ``MMSegInferencer``: class masks; the summary is each class's share."""
    from mmseg.apis import MMSegInferencer
    inferencer = MMSegInferencer(model=cfg, weights=checkpoint, device=device)
    if meta is not None:
        inferencer.model.dataset_meta = meta
    with _quiet():
        result = inferencer(image, return_vis=True, opacity=options.opacity)
    pred, drawn = result['predictions'], result['visualization']
    if isinstance(pred, list):  # a list only for several images
        pred, drawn = pred[0], drawn[0]
    classes = inferencer.model.dataset_meta['classes']
    ids, counts = np.unique(pred, return_counts=True)
    shares = ', '.join(f'{classes[ids[i]] if ids[i] < len(classes) else ids[i]} '
                       f'{100 * counts[i] / pred.size:.1f}%' for i in np.argsort(-counts))
    return drawn, [f'segmentation ({pred.shape[1]}x{pred.shape[0]}, {len(ids)} classes): '
                   f'{shares}']


def detect(cfg, checkpoint: str, image: str, device: str, meta: Optional[dict],
           options) -> Tuple[np.ndarray, List[str]]:
    """mmdet's ``DetInferencer``: boxes (and masks) above ``options.score_thr``."""
    from mmdet.apis import DetInferencer
    inferencer = DetInferencer(model=cfg, weights=checkpoint, device=device,
                               show_progress=False)
    if meta is not None:
        inferencer.model.dataset_meta = meta
        inferencer.visualizer.dataset_meta = meta
    with _quiet():
        result = inferencer(image, return_vis=True, pred_score_thr=options.score_thr,
                            no_save_vis=True)
    pred = result['predictions'][0]
    classes = inferencer.model.dataset_meta['classes']
    kept = [i for i, score in enumerate(pred['scores']) if score > options.score_thr]
    summary = [f'detection: {len(kept)} objects above score {options.score_thr} '
               f'(of {len(pred["scores"])} predicted)'
               + (', with masks' if 'masks' in pred else '')]
    for i in kept[:10]:
        box = ', '.join(f'{v:.0f}' for v in pred['bboxes'][i])
        summary.append(f'  {classes[pred["labels"][i]]} {pred["scores"][i]:.2f} '
                       f'box [{box}]')
    if len(kept) > 10:
        summary.append(f'  ... and {len(kept) - 10} more')
    return result['visualization'][0], summary


def classify(cfg, checkpoint: str, image: str, device: str, meta: Optional[dict],
             options) -> Tuple[np.ndarray, List[str]]:
    """mmpretrain's ``ImageClassificationInferencer``: the ``options.topk`` classes."""
    from mmpretrain.apis import ImageClassificationInferencer
    classes = meta['classes'] if meta is not None else None
    inferencer = ImageClassificationInferencer(model=cfg, pretrained=checkpoint,
                                               device=device, classes=classes)
    with _quiet():  # the picture is drawn beside the image file
        result = inferencer(image, show_dir=osp.join(osp.dirname(image), 'vis'))[0]
    drawn = inferencer.visualizer.get_image()
    scores = result['pred_scores']
    names = inferencer.classes
    top = np.argsort(-scores)[:options.topk]
    listed = ', '.join(f'{names[i] if names is not None else i} {scores[i]:.3f}'
                       for i in top)
    return drawn, [f'classification (top {len(top)} of {len(scores)}): {listed}']
