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

    # the README's round trip without upstream weights: to the reference layout and back.
    # EMAHook saved the EMA weights as state_dict (what tools/test.py just tested) and the
    # raw ones as ema_state_dict['module.' + key]; upstream's files hold the raw weights as
    # 'model' and the EMA ones as 'model_ema'
    reference, back = str(tmp_path / 'toy_reference.pth'), str(tmp_path / 'toy_back.pth')
    run_tool('tools/model_converters/mmpretrain2reference.py', ckpt, reference)
    saved, exported = torch.load(ckpt), torch.load(reference)
    assert sorted(exported) == ['model', 'model_ema']

    def reference_key(key):  # backbone.X -> X, head.fc.X -> head.X (LinearClsHead)
        return key[len('backbone.'):] if key.startswith('backbone.') else \
            'head.' + key[len('head.fc.'):]

    raw = {k: saved['ema_state_dict']['module.' + k] for k in saved['state_dict']}
    for key, ema in saved['state_dict'].items():
        assert torch.equal(exported['model'][reference_key(key)], raw[key]), key
        assert torch.equal(exported['model_ema'][reference_key(key)], ema), key
    assert len(exported['model']) == len(saved['state_dict'])
    assert not all(torch.equal(raw[k], v) for k, v in saved['state_dict'].items())
    # --ema reads model_ema back: exactly the checkpoint's EMA weights, under the same
    # keys, i.e. what tools/test.py just tested
    run_tool('tools/model_converters/reference2mmpretrain.py', reference, back, '--ema')
    state = torch.load(back)['state_dict']
    assert state.keys() == saved['state_dict'].keys()
    assert all(torch.equal(state[k], v) for k, v in saved['state_dict'].items())
    # and by default the raw weights (upstream's --finetune and --resume read 'model')
    raw_back = str(tmp_path / 'toy_back_raw.pth')
    run_tool('tools/model_converters/reference2mmpretrain.py', reference, raw_back)
    state = torch.load(raw_back)['state_dict']
    assert set(state) == set(raw) and all(torch.equal(state[k], raw[k]) for k in raw)

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
