"""Classification pretraining on toy data, then its weights initialise a toy UperNet."""
import os.path as osp
import re

import pytest
import torch
from helpers import (CLS, UPERNET, data_overrides, printed_metrics, run_tool,
                     write_child_config)

from mmshufflemamba.datasets import make_toy_ade20k, make_toy_classification


@pytest.mark.slow
def test_pretrain_then_initialise_upernet(tmp_path):
    cls_data, ade_data = str(tmp_path / 'toy_cls'), str(tmp_path / 'toy_ade')
    make_toy_classification(cls_data)
    make_toy_ade20k(ade_data)

    cls_config = write_child_config(tmp_path / 'cls.py', CLS, data_overrides(cls_data))
    cls_dir = str(tmp_path / 'cls')
    run_tool('tools/train.py', cls_config, '--work-dir', cls_dir)
    ckpt = osp.join(cls_dir, 'iter_240.pth')
    assert 'ema_state_dict' in torch.load(ckpt)  # EMA was on (its weights are saved)
    top1 = printed_metrics(run_tool('tools/test.py', cls_config, ckpt, '--work-dir',
                                    cls_dir))['accuracy/top1']
    print(f'toy top-1 after pretraining: {top1:.2f}% (chance 25%)')
    assert top1 > 90.0, top1

    # the README's round trip without upstream weights: to the reference layout and back
    reference, back = str(tmp_path / 'toy_reference.pth'), str(tmp_path / 'toy_back.pth')
    run_tool('tools/model_converters/mmpretrain2reference.py', ckpt, reference)
    assert set(torch.load(reference)) >= {'model'}
    assert 'patch_embed.proj.weight' in torch.load(reference)['model']
    run_tool('tools/model_converters/reference2mmpretrain.py', reference, back)
    again = printed_metrics(run_tool('tools/test.py', cls_config, back, '--work-dir',
                                     cls_dir))['accuracy/top1']
    assert again == top1, (again, top1)

    seg_config = write_child_config(
        tmp_path / 'upernet.py', UPERNET, data_overrides(ade_data) +
        f"model = dict(backbone=dict(init_cfg=dict(type='Pretrained', checkpoint='{ckpt}', "
        "prefix='backbone.')))\n"
        'train_cfg = dict(max_iters=10)\n'
        'default_hooks = dict(checkpoint=dict(interval=10))\n')
    seg_dir = str(tmp_path / 'seg')
    proc = run_tool('tools/train.py', seg_config, '--work-dir', seg_dir)
    report = re.search(r'ShuffleMamba init from .*', proc.stdout + proc.stderr).group(0)
    print(report)
    assert 'missing keys: none; unexpected keys: none' in report
    assert "dropped on purpose: ['cls_token'" in report
    assert osp.isfile(osp.join(seg_dir, 'iter_10.pth'))
