"""The configs' recipes hold the facts of upstream's scripts.

Facts read from huangzizheng01/ShuffleMamba (``run.sh``, ``run_reg.sh``, the argparse
defaults of ``main_shuffle.py``/``main_reg.py``, ``segmentation/configs/shufflemamba/``)
and hustvl/Vim (``vim/scripts/*.sh``, ``vim/main.py``). Learning rates are given per 512
images, as upstream scales them (``lr * total_batch / 512``).
"""
import os.path as osp

import pytest
import torch
from mmengine.config import Config

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def load(name: str) -> Config:
    folder = name.split('_')[0].split('-')[0]
    folder = {'upernet': 'upernet', 'vim': 'vim'}.get(folder, 'shufflemamba')
    return Config.fromfile(osp.join(ROOT, 'configs', folder, name + '.py'))


def total_batch(cfg: Config) -> int:
    return 8 * cfg.train_dataloader.batch_size


def warmup_and_floor(cfg: Config):
    """(warmup epochs, warmup start lr, final lr) of a LinearLR + CosineAnnealingLR plan."""
    warmup, cosine = cfg.param_scheduler
    assert warmup.type == 'LinearLR' and cosine.type == 'CosineAnnealingLR'
    return warmup.end, warmup.start_factor * cfg.optim_wrapper.optimizer.lr, cosine.eta_min


# run_reg.sh: (lr, weight decay, drop-path, epochs, input size, repeated aug) per stage
REG_STAGES = {
    '8xb128-300e_in1k-128px': (5e-4, 0.05, 0.1, 300, 128, True),
    '8xb128-100e_in1k': (2e-4, 0.05, 0.4, 100, 224, True),
    '8xb64-20e-ft_in1k': (1e-5, 0.1, 0.4, 20, 224, False),
}
# mambar_*_patch16_224: (arch, width, registers, cls_reduce)
REG_SIZES = {'s': ('small', 384, 12, 2), 'b': ('base', 768, 12, 4), 'l': ('large', 1024, 16, 8)}


@pytest.mark.parametrize('size', sorted(REG_SIZES))
@pytest.mark.parametrize('stage', sorted(REG_STAGES))
def test_reg_recipe_is_run_reg_sh(size, stage):
    cfg = load(f'shufflemamba-reg-{size}_{stage}')
    lr, wd, drop_path, epochs, img_size, repeated = REG_STAGES[stage]
    arch, width, k, r = REG_SIZES[size]
    backbone, head, optim = cfg.model.backbone, cfg.model.head, cfg.optim_wrapper
    assert (backbone.arch, backbone.num_registers, backbone.cls_token) == (arch, k, None)
    assert (head.in_channels, head.num_registers, head.reduction) == (width, k, r)
    assert backbone.shuffle_rate == 0.1 and backbone.drop_path_rate == drop_path
    assert backbone.img_size == img_size and cfg.train_cfg.max_epochs == epochs
    assert optim.optimizer.lr == pytest.approx(lr * total_batch(cfg) / 512)
    assert optim.optimizer.weight_decay == wd
    # main_reg.py defaults: betas (0.9, 0.999) (timm's), no clip, 5 warmup epochs from
    # 1e-6, min lr 1e-5, EMA 0.99996, bf16 autocast
    assert tuple(optim.optimizer.betas) == (0.9, 0.999) and optim.clip_grad is None
    assert warmup_and_floor(cfg) == pytest.approx((5, 1e-6, 1e-5))
    ema = [h for h in cfg.custom_hooks if h.type == 'EMAHook']
    assert len(ema) == 1 and ema[0].momentum == pytest.approx(1 - 0.99996)
    assert optim.type == 'AmpOptimWrapper' and optim.dtype == 'bfloat16'
    assert (cfg.train_dataloader.sampler.type == 'RepeatAugSampler') == repeated
    # smoothing 0.0 in stages 1-2 (mixup's soft targets), 0.1 in stage 3
    smoothing = 0.1 if stage.endswith('ft_in1k') else 0.0
    assert head.loss.get('label_smooth_val', 0.0) == smoothing
    assert [a.type for a in cfg.model.train_cfg.augments] == ['Mixup', 'CutMix']


@pytest.mark.parametrize('name', ['shufflemamba-t_8xb128_in1k', 'shufflemamba-b_8xb128_in1k'])
def test_plain_recipe_is_run_sh(name):
    cfg = load(name)
    optim = cfg.optim_wrapper
    assert optim.optimizer.lr == pytest.approx(5e-4 * total_batch(cfg) / 512)
    assert tuple(optim.optimizer.betas) == (0.9, 0.95) and optim.clip_grad.max_norm == 3.0
    assert optim.optimizer.weight_decay == 0.1
    assert warmup_and_floor(cfg)[0] == 30 and warmup_and_floor(cfg)[2] == 5e-6
    assert cfg.train_dataloader.sampler.type == 'RepeatAugSampler'  # default --repeated-aug
    assert cfg.train_dataloader.sampler.num_repeats == 3
    assert [h.momentum for h in cfg.custom_hooks if h.type == 'EMAHook'] == [1e-4]
    if name.startswith('shufflemamba-b'):
        assert cfg.model.backbone.drop_path_rate == 0.5 and cfg.model.backbone.shuffle_rate == 0.5


def test_middle_is_layernorm():
    from mmshufflemamba.models import ShuffleMamba
    cfg = load('shufflemamba-m_8xb128_in1k')
    assert ShuffleMamba(**{k: v for k, v in cfg.model.backbone.items()
                           if k != 'type'}).norm_type == 'LN'


@pytest.mark.parametrize('name,lr,wd,drop_path,batch,epochs,arch', [
    ('vim-t_8xb128-300e_in1k', 5e-4, 0.1, 0.0, 128, 300, 'tiny'),  # pt-vim-t.sh
    ('vim-s_8xb64-300e_in1k', 1e-3, 0.05, 0.05, 64, 300, 'small'),  # pt-vim-s.sh
    ('vim-t-stride8_8xb128-30e-ft_in1k', 5e-6, 1e-8, 0.0, 128, 30, 'tiny-stride8'),
    ('vim-s-stride8_8xb128-30e-ft_in1k', 5e-6, 1e-8, 0.0, 128, 30, 'small-stride8'),
])
def test_vim_recipes_are_the_vim_scripts(name, lr, wd, drop_path, batch, epochs, arch):
    cfg = load(name)
    optim = cfg.optim_wrapper
    assert cfg.model.backbone.arch == arch and cfg.model.backbone.cls_token == 'middle'
    assert cfg.model.backbone.shuffle_rate == 0.0
    assert cfg.model.backbone.drop_path_rate == drop_path
    assert cfg.train_dataloader.batch_size == batch and cfg.train_cfg.max_epochs == epochs
    assert optim.optimizer.lr == pytest.approx(lr * total_batch(cfg) / 512)
    assert optim.optimizer.weight_decay == wd and optim.type == 'OptimWrapper'  # --no_amp
    start = 1e-5 if 'stride8' in name else 1e-6  # --warmup-lr
    assert warmup_and_floor(cfg) == pytest.approx((5, start, 1e-5))


def timm_decays(name: str, param: torch.Tensor, skip: set) -> bool:
    """timm 0.4.12 ``add_weight_decay``, which upstream's create_optimizer uses: no decay
    for 1-D tensors, ``.bias`` and the model's ``no_weight_decay()`` names."""
    return not (param.ndim == 1 or name.endswith('.bias') or name in skip)


@pytest.mark.parametrize('name', ['shufflemamba-t_8xb128_in1k',
                                  'shufflemamba-reg-b_8xb128-300e_in1k-128px'])
def test_weight_decay_groups_are_timms(name):
    from mmengine.optim import DefaultOptimWrapperConstructor
    from mmengine.registry import init_default_scope
    from mmpretrain.registry import MODELS
    cfg = load(name)
    init_default_scope('mmpretrain')
    model = MODELS.build(dict(cfg.model, backbone=dict(
        cfg.model.backbone, arch=dict(embed_dims=32, num_layers=2)),
        head=dict(cfg.model.head, in_channels=32)))
    constructor = DefaultOptimWrapperConstructor(
        dict(type='OptimWrapper', optimizer=dict(cfg.optim_wrapper.optimizer)),
        cfg.optim_wrapper.paramwise_cfg)
    groups = constructor(model).optimizer.param_groups
    decay_of = {id(p): g['weight_decay'] for g in groups for p in g['params']}
    # upstream's model has the backbone's parameters at top level, no 'backbone.' prefix
    skip = {'pos_embed', 'cls_token', 'pos_embed_cls', 'register_tokens', 'pos_embed_reg'}
    checked = 0
    for full_name, param in model.named_parameters():
        short = full_name.split('.', 1)[1] if full_name.startswith('backbone.') else full_name
        decayed = decay_of[id(param)] > 0
        assert decayed == timm_decays(short, param, skip), full_name
        checked += 1
    assert checked > 20
    # the 2-D A_log is decayed upstream (timm ignores the _no_weight_decay marks)
    a_log = dict(model.named_parameters())['backbone.layers.0.mixer.A_log']
    assert decay_of[id(a_log)] > 0


# upstream segmentation configs: (arch, depth, norm, out_indices, drop-path, lr, clip)
PAPER_SEG = {
    'b': ('base', 24, 'LN', (5, 11, 17, 23), 0.2, 6e-5, None),
    'm': ('middle', 32, 'LN', (7, 15, 23, 31), 0.3, 6e-5, None),
    'l': ('large', 48, 'RMSNorm', (11, 23, 35, 47), 0.3, 3e-5, 5.0),
    'l40': (None, 40, 'LN', (9, 19, 29, 39), 0.2, 3e-5, 3.0),
}


@pytest.mark.parametrize('size', sorted(PAPER_SEG))
def test_paper_segmentation_configs_are_upstreams(size):
    from mmshufflemamba.models import ShuffleMamba
    cfg = load(f'upernet_shufflemamba-{size}_paper_8xb2-160k_ade20k-512x512')
    _, depth, norm, out_indices, drop_path, lr, clip = PAPER_SEG[size]
    backbone = cfg.model.backbone
    built = ShuffleMamba(**{k: v for k, v in backbone.items() if k != 'type'})
    assert (built.num_layers, built.norm_type) == (depth, norm)
    assert built.pyramid is None and built.intermediate_output == 'mixer'
    assert built.img_size == (224, 224)  # pos_embed resized at run time, as upstream
    assert tuple(backbone.out_indices) == out_indices and backbone.drop_path_rate == drop_path
    assert backbone.shuffle_rate == 0.0
    assert cfg.model.auxiliary_head.in_index == 3
    assert list(cfg.model.decode_head.in_index) == [0, 1, 2, 3]
    optim = cfg.optim_wrapper
    assert 'constructor' not in optim  # no layer decay
    assert optim.optimizer.lr == lr and optim.optimizer.weight_decay == 0.01
    assert (optim.get('clip_grad') or {}).get('max_norm') == clip
    assert dict(optim.paramwise_cfg.custom_keys) == {
        '.pos_embed': dict(decay_mult=0.0), '.cls_token': dict(decay_mult=0.0),
        'norm': dict(decay_mult=0.0), '.A_log': dict(decay_mult=0.0),
        '.D': dict(decay_mult=0.0)}


@pytest.mark.parametrize('name,depth,drop_path,clip', [
    ('upernet_shufflemamba-l_8xb2-160k_ade20k-512x512', 48, 0.3, 5.0),
    ('upernet_shufflemamba-l40_8xb2-160k_ade20k-512x512', 40, 0.2, 3.0),
])
def test_large_segmentation_configs_match_one_upstream_config(name, depth, drop_path, clip):
    from mmshufflemamba.models import ShuffleMamba
    cfg = load(name)
    arch = cfg.model.backbone.arch
    assert ShuffleMamba.arch_zoo[arch]['num_layers'] == depth
    assert cfg.model.backbone.drop_path_rate == drop_path
    assert cfg.optim_wrapper.clip_grad.max_norm == clip and cfg.optim_wrapper.optimizer.lr == 3e-5
