"""Draw a checkpoint's predictions on test images: image | ground truth | prediction.

    python tools/analysis_tools/show_predictions.py CONFIG CHECKPOINT [--out FILE]
        [--num 4 | --indices I ...] [--scale S] [--score-thr 0.3] [--device cpu]
        [--cfg-options key=value ...]

For mmseg and mmdet configs. Takes images of the config's test set (``--num`` spread
evenly over it, or ``--indices``), predicts each with the model as ``tools/test.py``
does (the config's test pipeline, ``model.test_step``), and draws the ground truth and the
prediction with the codebase's own visualizer (mmseg's ``SegLocalVisualizer``: class
masks and names; mmdet's ``DetLocalVisualizer``: boxes, masks, names and scores). Each
test image becomes one row of ``image | ground truth | prediction`` in one picture
(default ``WORK_DIR/vis/predictions.png`` beside the checkpoint). Small images are
enlarged ``--scale`` times (nearest neighbour; default: up to a 256 px short side) so that
the labels stay readable.
"""
import argparse
import math
import os.path as osp
import sys
from typing import List

import numpy as np
import torch
from mmengine.config import DictAction

from mmshufflemamba.apis import (CODEBASES, Codebase, InputError, check_checkpoint_file,
                                 check_data_paths, prepare_config)

GAP = 6  # white pixels between panels and rows
HEADER = 30


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='an mmseg or mmdet config')
    parser.add_argument('checkpoint')
    parser.add_argument('--out', help='picture to write (default: vis/predictions.png '
                        "in the checkpoint's folder)")
    parser.add_argument('--num', type=int, default=4, help='test images to draw, spread '
                        'evenly over the test set')
    parser.add_argument('--indices', type=int, nargs='+', help='test-set indices to draw '
                        '(instead of --num)')
    parser.add_argument('--scale', type=int, help='enlarge by this integer factor '
                        '(default: to a short side of at least 256 px)')
    parser.add_argument('--score-thr', type=float, default=0.3,
                        help='detection: draw predictions above this score')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    return parser.parse_args()


def pick_indices(size: int, num: int, indices: List[int] = None) -> List[int]:
    if indices:
        bad = [i for i in indices if not 0 <= i < size]
        if bad:
            raise InputError(f'--indices {bad} are outside the test set (0..{size - 1}).')
        return indices
    if num < 1:
        raise InputError(f'--num must be at least 1; got {num}.')
    return sorted({int(round(i)) for i in np.linspace(0, size - 1, min(num, size))})


def enlarge_seg(sample, scale: int, shape):
    """A SegDataSample with gt/pred maps at ``shape`` (H, W) enlarged ``scale`` times."""
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    out = SegDataSample()
    for key in ('gt_sem_seg', 'pred_sem_seg'):
        data = sample.get(key).data.float()[None]  # (1, 1, H, W)
        data = torch.nn.functional.interpolate(data, size=tuple(shape), mode='nearest')
        data = data.repeat_interleave(scale, 2).repeat_interleave(scale, 3)
        out.set_data({key: PixelData(data=data[0].long())})
    return out


def enlarge_det(sample, scale: int, shape):
    """A DetDataSample with gt/pred boxes and masks enlarged ``scale`` times."""
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData
    out = DetDataSample()
    for key in ('gt_instances', 'pred_instances'):
        instances = sample.get(key)
        scaled = InstanceData()
        scaled.bboxes = instances.bboxes.float() * scale
        scaled.labels = instances.labels
        if 'scores' in instances:
            scaled.scores = instances.scores
        if 'masks' in instances:
            masks = instances.masks
            if not isinstance(masks, torch.Tensor):  # gt: BitmapMasks / PolygonMasks
                masks = torch.from_numpy(masks.to_ndarray())
            masks = masks.bool()
            if tuple(masks.shape[-2:]) != tuple(shape):
                raise InputError(f'{key} masks are {tuple(masks.shape[-2:])}, the image '
                                 f'{tuple(shape)}: load annotations after Resize in the '
                                 'test pipeline, as OpenMMLab configs do.')
            scaled.masks = masks.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
        out.set_data({key: scaled})
    return out


def main() -> None:
    args = parse_args()
    cfg = prepare_config(args.config, cfg_options=args.cfg_options)
    codebase = CODEBASES.get(cfg.get('default_scope'))
    if codebase is None or codebase.init_model is None:
        raise InputError(f"{args.config} has default_scope {cfg.get('default_scope')!r}; "
                         "this tool draws mmseg and mmdet predictions. For a classifier's "
                         'prediction on an image use demo/image_demo.py IMAGE CONFIG '
                         'CHECKPOINT.')
    check_checkpoint_file(args.checkpoint)
    check_data_paths(cfg, ['test_dataloader'])

    import mmcv
    from mmengine.dataset import pseudo_collate
    from mmengine.registry import DATASETS, VISUALIZERS, init_default_scope
    model = Codebase.load(codebase.init_model)(cfg, args.checkpoint, device=args.device)
    init_default_scope(codebase.scope)
    dataset = DATASETS.build(cfg.test_dataloader.dataset)
    if len(dataset) == 0:
        raise InputError(f'the test set of {args.config} is empty.')
    vis_cfg = dict(cfg.visualizer, name='show_predictions', vis_backends=None)
    visualizer = VISUALIZERS.build(vis_cfg)
    visualizer.dataset_meta = dict(classes=dataset.metainfo['classes'],
                                   palette=dataset.metainfo['palette'])

    rows = []
    for index in pick_indices(len(dataset), args.num, args.indices):
        data = dataset[index]
        with torch.no_grad():
            sample = model.test_step(pseudo_collate([data]))[0].cpu()
        image = mmcv.imread(sample.img_path, channel_order='rgb')
        shape = image.shape[:2]
        scale = args.scale or max(1, math.ceil(256 / min(shape)))
        big = np.ascontiguousarray(image.repeat(scale, 0).repeat(scale, 1))
        name = osp.basename(sample.img_path)
        if codebase.task == 'segmentation':
            drawn = enlarge_seg(sample, scale, shape)
            panels = []
            for gt in (True, False):
                visualizer.add_datasample(name, big, drawn, draw_gt=gt, draw_pred=not gt)
                panels.append(visualizer.get_image())
            classes = visualizer.dataset_meta['classes']
            found = [', '.join(classes[i] for i in torch.unique(s.data).tolist()
                               if i < len(classes)) for s in (sample.gt_sem_seg,
                                                               sample.pred_sem_seg)]
            summary = f'ground truth: {found[0]} | prediction: {found[1]}'
        else:
            drawn = enlarge_det(sample, scale, shape)
            panels = []
            for gt in (True, False):
                visualizer.add_datasample(name, big, drawn, draw_gt=gt, draw_pred=not gt,
                                          pred_score_thr=args.score_thr)
                panels.append(visualizer.get_image())
            kept = int((sample.pred_instances.scores > args.score_thr).sum())
            summary = (f'ground truth: {len(sample.gt_instances)} objects | prediction: '
                       f'{kept} above score {args.score_thr}')
        rows.append(np.concatenate(
            [np.concatenate([panel, np.full((panel.shape[0], GAP, 3), 255, np.uint8)], 1)
             for panel in [big] + panels], 1)[:, :-GAP])
        print(f'[{index}] {name}: {summary}')

    width = max(row.shape[1] for row in rows)
    rows = [np.pad(row, ((0, GAP), (0, width - row.shape[1]), (0, 0)), constant_values=255)
            for row in rows]
    panel_width = (rows[0].shape[1] - 2 * GAP) // 3
    header = np.full((HEADER, width, 3), 255, np.uint8)
    visualizer.set_image(header)
    visualizer.draw_texts(['image', 'ground truth', 'prediction'],
                          positions=np.array([[i * (panel_width + GAP) + 4, 6]
                                              for i in range(3)]),
                          colors='black', font_sizes=14)
    canvas = np.concatenate([visualizer.get_image()] + rows, 0)
    out = args.out or osp.join(osp.dirname(osp.abspath(args.checkpoint)), 'vis',
                               'predictions.png')
    mmcv.imwrite(mmcv.rgb2bgr(canvas), out)
    print(f'predictions (image | ground truth | prediction, {len(rows)} test images): {out}')


if __name__ == '__main__':
    try:
        main()
    except InputError as err:  # the message says what is wrong and how to fix it
        sys.exit(str(err))
