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
import os.path as osp
import sys
import tempfile
import warnings

from mmengine.config import DictAction

from mmshufflemamba.apis import (InputError, check_checkpoint_file, checkpoint_has_classes,
                                 codebase_of, dataset_meta_from_config,
                                 describe_preprocessing, load_rgb, prepare_config)

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


def main() -> None:
    args = parse_args()
    rgb, note = load_rgb(args.img)  # first: a bad image fails before any model loads
    cfg = prepare_config(args.config, cfg_options=args.cfg_options)
    check_checkpoint_file(args.checkpoint)
    if not 0 < args.opacity <= 1:
        raise InputError(f'--opacity must be in (0, 1]; got {args.opacity}.')
    codebase = codebase_of(cfg, 'image_demo')
    import mmcv
    import torch
    from mmengine.registry import init_default_scope
    device = args.device or ('cuda:0' if torch.cuda.is_available() else 'cpu')
    out_file = args.out_file or osp.join(
        'outputs', f'{osp.splitext(osp.basename(args.img))[0]}_'
        f'{osp.splitext(osp.basename(args.config))[0]}.png')
    init_default_scope(codebase.scope)
    meta = None if checkpoint_has_classes(args.checkpoint) else dataset_meta_from_config(cfg)
    height, width = rgb.shape[:2]
    print(f'image: {args.img} ({width}x{height}, {note})')
    print(f"model: {args.config} ({codebase.task}, {codebase.inferencer.rsplit('.', 1)[1]} "
          f'on {device})')
    print(f'preprocessing: {describe_preprocessing(cfg, codebase)}')
    if meta is not None:
        print(f"the checkpoint carries no class names: using the config's test-set "
              f"classes ({len(meta['classes'])})")
    with tempfile.TemporaryDirectory() as tmp:
        # the inferencers read files as BGR for the model and RGB for drawing
        image = osp.join(tmp, osp.splitext(osp.basename(args.img))[0] + '.png')
        mmcv.imwrite(rgb[..., ::-1], image)
        with warnings.catch_warnings():
            if meta is not None:  # infer sets these classes; no "using COCO classes"
                warnings.filterwarnings('ignore', 'dataset_meta or class names')
            drawn, summary = codebase.infer(cfg, args.checkpoint, image, device, meta, args)
    for line in summary:
        print(line)
    mmcv.imwrite(drawn[..., ::-1], out_file)
    print(f'visualization: {out_file}')


if __name__ == '__main__':
    try:
        main()
    except InputError as err:  # the message says what is wrong and how to fix it
        sys.exit(str(err))
