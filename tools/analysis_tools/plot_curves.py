"""Plot a run's training curve from the scalars it logged: loss and validation metric.

    python tools/analysis_tools/plot_curves.py WORK_DIR [--out FILE] [--metrics KEY ...]

Reads ``WORK_DIR/<timestamp>/vis_data/scalars.json`` (what mmengine's ``LocalVisBackend``
writes during ``tools/train.py``; the latest run with training records is used, or pass
the ``scalars.json`` itself) and draws two panels over the training iterations: the loss
(the total in bold, its terms thin) and the validation metric(s) at each validation. The
metric defaults to the main one the run logged (``mIoU``, ``coco/bbox_mAP`` and
``coco/segm_mAP``, ``accuracy/top1``); ``--metrics`` picks others. Works for mmseg, mmdet
and mmpretrain runs alike; by-epoch runs have their validations placed at the last
iteration of their epoch.
"""
import argparse
import glob
import json
import os
import os.path as osp
from typing import Dict, List, Optional, Tuple

MAIN_METRICS = ('mIoU', 'coco/bbox_mAP', 'coco/segm_mAP', 'accuracy/top1')
NOT_METRICS = {'data_time', 'time', 'step', 'iter', 'epoch', 'lr', 'base_lr', 'memory'}


def find_scalars(path: str) -> str:
    """The ``scalars.json`` of ``path``: the file itself, or a work dir's latest training
    run (a run of ``tools/test.py`` in the same work dir logs no training records)."""
    if osp.isfile(path):
        return path
    if not osp.isdir(path):
        raise SystemExit(f'{path}: no such work dir or scalars.json file.')
    candidates = sorted(glob.glob(osp.join(path, '*', 'vis_data', 'scalars.json')))
    for candidate in reversed(candidates):
        if any('loss' in record for record in read_records(candidate)):
            return candidate
    raise SystemExit(
        f'{path}: found no training run in it ({len(candidates)} scalars.json without '
        f'training records). Expected WORK_DIR/<timestamp>/vis_data/scalars.json as '
        f'written by tools/train.py with the LocalVisBackend (the configs\' default).')


def read_records(path: str) -> List[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def split_records(records: List[dict]) -> Tuple[List[dict], List[dict]]:
    """Training records (they carry a loss) and validation records (metrics only)."""
    train = [r for r in records if 'loss' in r]
    val = [r for r in records if 'loss' not in r and 'lr' not in r
           and any(k not in NOT_METRICS for k in r)]
    return train, val


def validation_steps(train: List[dict], val: List[dict]) -> Optional[List[int]]:
    """The training iteration of each validation (by-epoch runs log the epoch); None when
    they cannot be placed (an iteration-based run that logged its metrics by epoch)."""
    if not any('epoch' in r for r in train):
        steps = [r['step'] for r in val]
        if len(set(steps)) < len(steps):
            return None  # an iteration-based run that logged its metrics by epoch
        return steps
    last_step = {}
    for r in train:
        last_step[r['epoch']] = max(last_step.get(r['epoch'], 0), r['step'])
    return [last_step.get(r['step'], r['step']) for r in val]


def choose_metrics(val: List[dict], wanted: List[str] = None) -> List[str]:
    logged = [k for k in val[0] if k not in NOT_METRICS] if val else []
    if wanted:
        missing = [k for k in wanted if k not in logged]
        if missing:
            raise SystemExit(f'--metrics {missing} were not logged; the run logged '
                             f'{logged}.')
        return list(wanted)
    main = [k for k in MAIN_METRICS if k in logged]
    return main or logged


def fmt(value: float) -> str:
    """Percentages (mIoU 86.54) with two decimals, fractions (mAP 0.017) with three."""
    return f'{value:.2f}' if abs(value) > 1 else f'{value:.3f}'


def plot(train: List[dict], val: List[dict], val_steps: Optional[List[int]],
         metrics: List[str], out: str, title: str) -> Dict[str, float]:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(11, 4))
    steps = [r['step'] for r in train]
    loss_keys = ['loss'] + sorted({k for r in train for k in r if 'loss' in k} - {'loss'})
    for key in loss_keys:
        xs = [r['step'] for r in train if key in r]
        ys = [r[key] for r in train if key in r]
        ax_loss.plot(xs, ys, label=key, linewidth=2.2 if key == 'loss' else 1.0,
                     alpha=1.0 if key == 'loss' else 0.7)
    ax_loss.set(title='training loss', xlabel='iteration', ylabel='loss')
    ax_loss.set_xlim(0, max(steps) if steps else 1)
    ax_loss.legend(fontsize=8)
    ax_loss.grid(alpha=0.3)

    last = {}
    if val and metrics and val_steps:
        xs = val_steps
        for key in metrics:
            ys = [r[key] for r in val]
            ax_metric.plot(xs, ys, marker='o', label=key)
            ax_metric.annotate(fmt(ys[-1]), (xs[-1], ys[-1]), textcoords='offset points',
                               xytext=(-10, 8), ha='right')
            last[key] = ys[-1]
        ax_metric.set_xlim(0, max(steps + xs))
        values = [r[k] for r in val for k in metrics]
        ax_metric.set_ylim(min(0, *values), max(values) * 1.15 or 1)  # room for the label
        ax_metric.legend(fontsize=8)
        ax_metric.set(title='validation', xlabel='iteration', ylabel=', '.join(metrics))
    else:
        why = ('no validation was logged during training' if not val else
               'validations logged by epoch in an iteration-based run:\n'
               'train with default_hooks.logger.log_metric_by_epoch=False')
        ax_metric.text(0.5, 0.5, why, ha='center', va='center',
                       transform=ax_metric.transAxes)
        ax_metric.set(title='validation', xlabel='iteration')
    ax_metric.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    os.makedirs(osp.dirname(osp.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return last


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('work_dir', help='work dir of a tools/train.py run, or its '
                        'vis_data/scalars.json')
    parser.add_argument('--out', help='picture to write (default: '
                        'WORK_DIR/vis/training_curve.png)')
    parser.add_argument('--metrics', nargs='+', help='validation metrics to draw')
    args = parser.parse_args()

    scalars = find_scalars(args.work_dir)
    train, val = split_records(read_records(scalars))
    if not train:
        raise SystemExit(f'{scalars}: no training records (no "loss" logged).')
    metrics = choose_metrics(val, args.metrics)
    base = args.work_dir if osp.isdir(args.work_dir) else osp.dirname(
        osp.dirname(osp.dirname(scalars)))
    out = args.out or osp.join(base, 'vis', 'training_curve.png')
    val_steps = validation_steps(train, val)
    if val and val_steps is None:
        print(f'warning: {scalars} logs its {len(val)} validations all at step '
              f'{val[0]["step"]} (metrics logged by epoch in an iteration-based run), so '
              'they cannot be placed on the curve. Train with '
              'default_hooks.logger.log_metric_by_epoch=False to plot them.')
    last = plot(train, val, val_steps, metrics, out, title=osp.relpath(scalars))
    summary = ', '.join(f'{k} {fmt(v)}' for k, v in last.items()) or 'no validation'
    print(f'{len(train)} training and {len(val)} validation records from {scalars} '
          f'(last: loss {train[-1]["loss"]:.4f}, {summary})')
    print(f'training curve: {out}')


if __name__ == '__main__':
    main()
