"""Run a checkpoint on one image and draw what it predicts.

    python demo/image_demo.py IMAGE CONFIG CHECKPOINT [--out-file FILE] [--device cpu]
        [--score-thr 0.3] [--opacity 0.5] [--topk 5] [--cfg-options key=value ...]

The task comes from the config's ``default_scope`` and the codebase's own inferencer
runs it: mmseg -> ``MMSegInferencer`` (class masks and names), mmdet -> ``DetInferencer``
(boxes, masks, names and scores above ``--score-thr``), mmpretrain ->
``ImageClassificationInferencer`` (the top class and its score). The picture goes to
``--out-file`` (default ``outputs/<image>_<config>.png``); a summary is printed.

Any image size works; the config's test pipeline decides how the image reaches the model
(the line ``preprocessing:`` says what it does for the config at hand):
  segmentation   resized as the test pipeline says (ADE20K configs: to fit 2048x512,
                 keeping the aspect ratio; the toy config: short side 64), then **padded**
                 to a multiple of 16 (the patch size) by the data preprocessor
                 (``test_cfg=dict(size_divisor=16)``); the prediction is cropped back and
                 resized to the original image. Slide and whole inference alike.
  detection      resized keeping the aspect ratio (COCO configs: to fit 1333x800), then
                 padded to a multiple of 32 by mmdet's data preprocessor; boxes and masks
                 are mapped back to the original image.
  classification resized (short side 256 for 224 px models; 73 for the 64 px toy) and
                 **centre-cropped** to the model's input, as in the evaluation recipe: the
                 prediction is for the central crop.
Grayscale, palette and CMYK images are converted to RGB, 16-bit grayscale scaled from its
min..max to 8 bits; images with transparency (RGBA, LA, palette with alpha) are composited
over white. A missing or unreadable file stops with a message before any model loads.
"""
import argparse
import contextlib
import io
import os.path as osp
import sys
import tempfile
import warnings
from typing import Optional

import numpy as np
from mmengine.config import Config, DictAction

TASKS = {
    'mmseg': ('segmentation', 'MMSegInferencer'),
    'mmdet': ('detection', 'DetInferencer'),
    'mmpretrain': ('classification', 'ImageClassificationInferencer'),
}
# what the inferencers' pipelines do not use for a bare image
NOT_PREPROCESSING = ('LoadImageFromFile', 'LoadAnnotations', 'PackSegInputs',
                     'PackDetInputs', 'PackInputs')


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('img', help='image file')
    parser.add_argument('config', help='an mmseg, mmdet or mmpretrain config')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--out-file', help='picture to write (default: '
                        'outputs/<image>_<config>.png)')
    parser.add_argument('--device', default=None, help='cpu, cuda, cuda:1 ... '
                        '(default: cuda:0 if available, else cpu)')
    parser.add_argument('--score-thr', type=float, default=0.3,
                        help='detection: draw and list objects above this score')
    parser.add_argument('--opacity', type=float, default=0.5,
                        help='segmentation: opacity of the class masks, in (0, 1]')
    parser.add_argument('--topk', type=int, default=5,
                        help='classification: classes to list')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config entries, e.g. model.test_cfg.mode=whole')
    return parser.parse_args()


def load_rgb(path: str):
    """``path`` as an RGB uint8 array, and a note on what was converted."""
    from PIL import Image, ImageOps
    if not osp.isfile(path):
        raise SystemExit(f'image {path}: no such file.')
    try:
        with Image.open(path) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
    except (OSError, ValueError, SyntaxError) as err:  # PIL's errors for bad files
        raise SystemExit(f'image {path}: cannot read it as an image ({err}). Give a file '
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


def describe_preprocessing(cfg: Config, scope: str) -> str:
    """The test pipeline's transforms and the data preprocessor's padding, in words."""
    steps = []
    for transform in cfg.test_dataloader.dataset.get('pipeline', []):
        if transform['type'] in NOT_PREPROCESSING:
            continue
        args = ', '.join(f'{k}={v!r}' for k, v in transform.items()
                         if k not in ('type', 'backend_args', 'backend', 'interpolation'))
        steps.append(f"{transform['type']}({args})")
    preprocessor = cfg.model.get('data_preprocessor') or {}
    if scope == 'mmseg':
        divisor = (preprocessor.get('test_cfg') or {}).get('size_divisor')
        steps.append(f'pad to a multiple of {divisor}' if divisor else 'no padding')
        steps.append(f"{cfg.model.get('test_cfg', {}).get('mode', 'whole')} inference")
    elif scope == 'mmdet':
        divisor = preprocessor.get('pad_size_divisor')
        steps.append(f'pad to a multiple of {divisor}' if divisor else 'no padding')
    return ' -> '.join(steps) or 'none'


def dataset_meta_from_config(cfg: Config) -> Optional[dict]:
    """Classes (and palette) of the config's test set: the dataset class's METAINFO
    updated with the config's ``metainfo``, as the dataset itself would have them; None
    when the config names no classes."""
    from mmengine.registry import DATASETS
    dataset = cfg.test_dataloader.dataset
    while 'dataset' in dataset:  # wrappers
        dataset = dataset.dataset
    with DATASETS.switch_scope_and_registry(cfg.get('default_scope')) as registry:
        dataset_cls = registry.get(dataset['type'])
    meta = dict(getattr(dataset_cls, 'METAINFO', {}) or {})
    meta.update(dataset.get('metainfo') or {})
    if not meta.get('classes'):
        return None
    return {k: list(v) for k, v in meta.items() if k in ('classes', 'palette')}


def checkpoint_has_classes(checkpoint: str) -> bool:
    import torch
    try:
        ckpt = torch.load(checkpoint, map_location='cpu', mmap=True)
    except RuntimeError:  # not a zip checkpoint: mmap is not possible
        ckpt = torch.load(checkpoint, map_location='cpu')
    meta = ckpt.get('meta', {}) if isinstance(ckpt, dict) else {}
    return bool((meta.get('dataset_meta') or {}).get('classes') or meta.get('CLASSES'))


def main() -> None:
    args = parse_args()
    rgb, note = load_rgb(args.img)  # first: a bad image fails before any model loads
    if not osp.isfile(args.config):
        raise SystemExit(f'config {args.config}: no such file.')
    import torch

    import mmshufflemamba  # noqa: F401  (safe checkpoint loading for torch >= 2.6)
    from mmshufflemamba.utils import check_checkpoint_file
    check_checkpoint_file(args.checkpoint)
    if not 0 < args.opacity <= 1:
        raise SystemExit(f'--opacity must be in (0, 1]; got {args.opacity}.')
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    scope = cfg.get('default_scope')
    if scope not in TASKS:
        raise SystemExit(f'{args.config}: default_scope {scope!r}; image_demo runs mmseg, '
                         f'mmdet and mmpretrain configs ({", ".join(TASKS)}).')
    task, inferencer_name = TASKS[scope]
    device = args.device or ('cuda:0' if torch.cuda.is_available() else 'cpu')
    out_file = args.out_file or osp.join(
        'outputs', f'{osp.splitext(osp.basename(args.img))[0]}_'
        f'{osp.splitext(osp.basename(args.config))[0]}.png')

    from mmengine.registry import init_default_scope
    init_default_scope(scope)
    meta = None if checkpoint_has_classes(args.checkpoint) else dataset_meta_from_config(cfg)
    height, width = rgb.shape[:2]
    print(f'image: {args.img} ({width}x{height}, {note})')
    print(f'model: {args.config} ({task}, {inferencer_name} on {device})')
    print(f'preprocessing: {describe_preprocessing(cfg, scope)}')
    if meta is not None:
        print(f"the checkpoint carries no class names: using the config's test-set "
              f"classes ({len(meta['classes'])})")

    import mmcv
    with tempfile.TemporaryDirectory() as tmp:
        # the inferencers read files as BGR for the model and RGB for drawing
        image = osp.join(tmp, osp.splitext(osp.basename(args.img))[0] + '.png')
        mmcv.imwrite(rgb[..., ::-1], image)
        with warnings.catch_warnings():
            if meta is not None:  # we set the classes below; no "using COCO classes"
                warnings.filterwarnings('ignore', 'dataset_meta or class names')
            if scope == 'mmseg':
                drawn, summary = run_seg(cfg, args, device, image, meta)
            elif scope == 'mmdet':
                drawn, summary = run_det(cfg, args, device, image, meta)
            else:
                drawn, summary = run_cls(cfg, args, device, image, meta, tmp)
    for line in summary:
        print(line)
    mmcv.imwrite(drawn[..., ::-1], out_file)
    print(f'visualization: {out_file}')


def quiet():
    """Keep the inferencers' progress bars (written without a final newline) out of the
    printed summary."""
    return contextlib.redirect_stdout(io.StringIO())


def run_seg(cfg, args, device, image, meta):
    from mmseg.apis import MMSegInferencer
    inferencer = MMSegInferencer(model=cfg, weights=args.checkpoint, device=device)
    if meta is not None:
        inferencer.model.dataset_meta = meta
    with quiet():
        result = inferencer(image, return_vis=True, opacity=args.opacity)
    pred, drawn = result['predictions'], result['visualization']
    if isinstance(pred, list):  # a list only for several images
        pred, drawn = pred[0], drawn[0]
    classes = inferencer.model.dataset_meta['classes']
    ids, counts = np.unique(pred, return_counts=True)
    order = np.argsort(-counts)
    shares = ', '.join(f'{classes[ids[i]] if ids[i] < len(classes) else ids[i]} '
                       f'{100 * counts[i] / pred.size:.1f}%' for i in order)
    summary = [f'segmentation ({pred.shape[1]}x{pred.shape[0]}, {len(ids)} classes): '
               f'{shares}']
    return drawn, summary


def run_det(cfg, args, device, image, meta):
    from mmdet.apis import DetInferencer
    inferencer = DetInferencer(model=cfg, weights=args.checkpoint, device=device,
                               show_progress=False)
    if meta is not None:
        inferencer.model.dataset_meta = meta
        inferencer.visualizer.dataset_meta = meta
    with quiet():
        result = inferencer(image, return_vis=True, pred_score_thr=args.score_thr,
                            no_save_vis=True)
    pred = result['predictions'][0]
    classes = inferencer.model.dataset_meta['classes']
    kept = [i for i, score in enumerate(pred['scores']) if score > args.score_thr]
    summary = [f'detection: {len(kept)} objects above score {args.score_thr} '
               f'(of {len(pred["scores"])} predicted)'
               + (', with masks' if 'masks' in pred else '')]
    for i in kept[:10]:
        box = ', '.join(f'{v:.0f}' for v in pred['bboxes'][i])
        summary.append(f'  {classes[pred["labels"][i]]} {pred["scores"][i]:.2f} '
                       f'box [{box}]')
    if len(kept) > 10:
        summary.append(f'  ... and {len(kept) - 10} more')
    return result['visualization'][0], summary


def run_cls(cfg, args, device, image, meta, tmp):
    from mmpretrain.apis import ImageClassificationInferencer
    classes = meta['classes'] if meta is not None else None
    inferencer = ImageClassificationInferencer(model=cfg, pretrained=args.checkpoint,
                                               device=device, classes=classes)
    with quiet():
        result = inferencer(image, show_dir=osp.join(tmp, 'vis'))[0]
    drawn = inferencer.visualizer.get_image()
    scores = result['pred_scores']
    names = inferencer.classes
    top = np.argsort(-scores)[:args.topk]
    listed = ', '.join(f'{names[i] if names is not None else i} {scores[i]:.3f}'
                       for i in top)
    return drawn, [f'classification (top {len(top)} of {len(scores)}): {listed}']


if __name__ == '__main__':
    sys.exit(main())
