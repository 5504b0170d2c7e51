"""The configs' recipes hold the facts of upstream's scripts.

Facts read from huangzizheng01/ShuffleMamba (``run.sh``, ``run_reg.sh``, the argparse
defaults of ``main_shuffle.py``/``main_reg.py``, ``segmentation/configs/shufflemamba/``)
and hustvl/Vim (``vim/scripts/*.sh``, ``vim/main.py``). Learning rates are given per 512
images, as upstream scales them (``lr * total_batch / 512``).
"""
import math
import os.path as osp

import pytest
import torch
from helpers import load_config
from mmengine.config import Config


def load(name: str) -> Config:
    folder = name.split('_')[0].split('-')[0]
    folder = {'upernet': 'upernet', 'vim': 'vim'}.get(folder, 'shufflemamba')
    return load_config(osp.join('configs', folder, name + '.py'))


def total_batch(cfg: Config) -> int:
    return 8 * cfg.train_dataloader.batch_size


def warmup_and_floor(cfg: Config):
    """(warmup epochs, warmup start lr, final lr) of the config's timm-style schedule, which
    must span the whole run, as timm's ``t_initial`` does."""
    scheduler, = cfg.param_scheduler
    assert scheduler.type == 'mmshufflemamba.TimmCosineLR'
    assert scheduler.epochs == cfg.train_cfg.max_epochs
    return scheduler.warmup_epochs, scheduler.warmup_lr, scheduler.min_lr


# run_reg.sh: (lr, weight decay, drop-path, epochs, input size, repeated aug) per stage
REG_STAGES = {
    '8xb128-300e_in1k-128px': (5e-4, 0.05, 0.1, 300, 128, True),
    '8xb128-100e_in1k': (2e-4, 0.05, 0.4, 100, 224, True),
    '8xb64-20e-ft_in1k': (1e-5, 0.1, 0.4, 20, 224, False),
}
# mambar_*_patch16_224: (arch, width, registers, cls_reduce)
REG_SIZES = {'t': ('tiny', 192, 12, 1), 's': ('small', 384, 12, 2), 'b': ('base', 768, 12, 4),
             'l': ('large', 1024, 16, 8)}


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
    assert cfg.model.backbone.init_scheme == 'vim'  # models_reg.py initialises as Vim
    # stages 2 and 3 start from the previous stage's raw weights (--finetune: 'model')
    raw = any(h.type == 'mmshufflemamba.LoadRawWeightsHook' for h in cfg.custom_hooks)
    assert raw == (cfg.get('load_from') is not None)
    # smoothing 0.0 in stages 1-2 (mixup's soft targets), 0.1 in stage 3
    smoothing = 0.1 if stage.endswith('ft_in1k') else 0.0
    assert head.loss.get('label_smooth_val', 0.0) == smoothing
    assert [a.type for a in cfg.model.train_cfg.augments] == ['Mixup', 'CutMix']


@pytest.mark.parametrize('name', [f'shufflemamba-{size}_8xb128_in1k' for size in 'tsmb'])
def test_plain_recipe_is_run_sh(name):
    cfg = load(name)
    optim = cfg.optim_wrapper
    assert optim.optimizer.lr == pytest.approx(5e-4 * total_batch(cfg) / 512)
    assert tuple(optim.optimizer.betas) == (0.9, 0.95) and optim.clip_grad.max_norm == 3.0
    assert optim.optimizer.weight_decay == 0.1
    assert warmup_and_floor(cfg) == pytest.approx((30, 5e-7, 5e-6))  # run.sh
    assert cfg.model.backbone.init_scheme == 'shufflemamba'  # models_shuffle.py's init
    assert cfg.train_dataloader.sampler.type == 'RepeatAugSampler'  # default --repeated-aug
    assert cfg.train_dataloader.sampler.num_repeats == 3
    # run.sh: EMA decay 0.9999 per step at 8 x 256 images, 625 steps per epoch (RASampler,
    # drop_last): a horizon of 1 / 1e-4 steps = 16 epochs. mmengine's momentum is 1 - decay
    # per step; at our batch the same horizon in epochs needs momentum 1e-4 * batch / 2048
    momentum, = [h.momentum for h in cfg.custom_hooks if h.type == 'EMAHook']
    assert momentum == pytest.approx(1e-4 * total_batch(cfg) / 2048)
    images = 1281167  # ImageNet-1k train
    upstream_epochs = 1 / 1e-4 / (images // 256 * 256 // 8 // 256)  # 10000 / 625
    steps = math.ceil(math.ceil(images / 8) / cfg.train_dataloader.batch_size)  # ours: 1252
    assert upstream_epochs == pytest.approx(16.0)
    assert 1 / momentum / steps == pytest.approx(upstream_epochs, rel=0.01)
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
    assert cfg.model.backbone.init_scheme == 'vim'


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


def timm_epoch_lrs(epochs, warmup_epochs, warmup_lr, min_lr, base):
    """The lr of each epoch under timm 0.4.12's CosineLRScheduler as DeiT's loop drives it:
    the scheduler is built (setting the warm-up lr, or the base lr without warm-up), every
    epoch trains at the current lr, then ``step(epoch)`` sets ``_get_lr(epoch)``."""
    def get_lr(t):
        if t < warmup_epochs:
            return warmup_lr + t * (base - warmup_lr) / warmup_epochs
        return min_lr + 0.5 * (base - min_lr) * (1 + math.cos(math.pi * t / epochs))
    lr = warmup_lr if warmup_epochs else base
    lrs = []
    for epoch in range(epochs):
        lrs.append(lr)
        lr = get_lr(epoch)
    return lrs


@pytest.mark.parametrize('epochs,warmup,warmup_lr,min_lr', [
    (300, 30, 5e-7, 5e-6), (100, 5, 1e-6, 1e-5), (20, 5, 1e-6, 1e-5), (30, 5, 1e-5, 1e-5),
    (12, 0, 0.0, 1e-6)])
def test_timm_cosine_schedule_is_timms(epochs, warmup, warmup_lr, min_lr):
    from mmshufflemamba.engine import TimmCosineLR
    base = 2e-3
    params = [torch.nn.Parameter(torch.zeros(1))]
    optimizer = torch.optim.SGD([dict(params=params), dict(params=[torch.nn.Parameter(
        torch.zeros(1))], lr=base / 2)], lr=base)
    scheduler = TimmCosineLR(optimizer, epochs=epochs, warmup_epochs=warmup,
                             warmup_lr=warmup_lr, min_lr=min_lr)
    ours = [[], []]
    for _ in range(epochs):
        for group, record in zip(optimizer.param_groups, ours):
            record.append(group['lr'])
        optimizer.step()
        scheduler.step()
    assert ours[0] == pytest.approx(timm_epoch_lrs(epochs, warmup, warmup_lr, min_lr, base))
    assert ours[1] == pytest.approx(timm_epoch_lrs(epochs, warmup, warmup_lr, min_lr,
                                                   base / 2))
    if (epochs, warmup) == (300, 30):  # what the loop's one-epoch offset gives, in numbers
        lrs = [lr / base for lr in ours[0]]
        assert lrs[0] == lrs[1] == pytest.approx(5e-7 / base)
        assert lrs[30] == pytest.approx(0.9667, abs=1e-4)  # f(29): still in warm-up
        assert lrs[150] == pytest.approx(0.5065, abs=1e-4)  # f(149)


def test_plain_init_scheme_is_models_shuffles():
    """models_shuffle.py: segm_init_weights on every linear (trunc-normal 0.02, zero bias,
    the step-size bias included), out_proj rescaled by 1/sqrt(depth), class token zero."""
    from mmshufflemamba.models import ShuffleMamba
    torch.manual_seed(0)
    shuffle = ShuffleMamba(arch='small', init_scheme='shufflemamba')
    vim = ShuffleMamba(arch='small', init_scheme='vim')
    mixer, vim_mixer = shuffle.layers[3].mixer, vim.layers[3].mixer
    assert torch.count_nonzero(mixer.dt_proj.bias) == 0 and \
        torch.count_nonzero(mixer.dt_proj_b.bias) == 0
    for linear in (mixer.in_proj, mixer.x_proj, mixer.dt_proj_b):
        assert linear.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert torch.count_nonzero(shuffle.cls_token) == 0
    bound = 1 / math.sqrt(mixer.out_proj.in_features) / math.sqrt(24)  # kaiming(a=sqrt 5)
    assert mixer.out_proj.weight.abs().max() <= bound
    assert mixer.out_proj.weight.abs().max() > 0.9 * bound
    # Vim/Mamba-Reg: step sizes softplus^-1 of [0.001, 0.1], default linears, a token
    dt = torch.nn.functional.softplus(vim_mixer.dt_proj.bias)
    assert dt.min() >= 1e-4 and dt.max() <= 0.1 + 1e-6
    assert vim_mixer.in_proj.weight.std().item() > 0.025  # kaiming-uniform: 0.0295
    assert vim.cls_token.abs().sum() > 0


@pytest.mark.slow
def test_load_raw_weights_hook_starts_from_raw_weights_with_a_fresh_ema(tmp_path):
    """A checkpoint written with an EMA hook holds the EMA weights as state_dict and the raw
    ones in ema_state_dict. Upstream's next stage starts from the raw weights with a new
    EMA; with LoadRawWeightsHook, load_from does the same (mmpretrain's EMAHook alone loads
    the raw weights but continues the old average)."""
    from helpers import data_overrides, run_tool, write_child_config
    from mmengine.config import Config
    from mmengine.runner import Runner

    from mmshufflemamba.datasets import make_toy_classification
    data = str(tmp_path / 'toy_cls')
    make_toy_classification(data, train_per_class=4, val_per_class=1)
    config = write_child_config(tmp_path / 'cls.py',
                                'configs/shufflemamba/shufflemamba-toy_1xb32_toycls.py',
                                data_overrides(data))
    run_tool('tools/train.py', config, '--work-dir', str(tmp_path / 'stage1'), '--cfg-options',
             'train_cfg.max_iters=3', 'train_cfg.val_interval=3',
             'default_hooks.checkpoint.interval=3')
    ckpt_path = str(tmp_path / 'stage1' / 'iter_3.pth')
    ckpt = torch.load(ckpt_path, map_location='cpu', weights_only=False)
    key = 'backbone.layers.0.mixer.in_proj.weight'
    raw, averaged = ckpt['ema_state_dict']['module.' + key], ckpt['state_dict'][key]
    assert not torch.equal(raw, averaged)  # 3 steps with momentum 0.05

    def loaded(hooks):
        cfg = Config.fromfile(config)
        cfg.work_dir = str(tmp_path / f'stage2_{len(hooks)}')
        cfg.load_from = ckpt_path
        cfg.custom_hooks = hooks + [dict(type='EMAHook', momentum=0.05,
                                         priority='ABOVE_NORMAL')]
        runner = Runner.from_cfg(cfg)
        runner.call_hook('before_run')  # as Runner.train(): the EMA hook builds its model
        runner.load_or_resume()
        ema_hook = next(h for h in runner.hooks if type(h).__name__ == 'EMAHook')
        return (runner.model.state_dict()[key],
                ema_hook.ema_model.module.state_dict()[key])

    model, ema = loaded([dict(type='mmshufflemamba.LoadRawWeightsHook')])
    torch.testing.assert_close(model, raw, rtol=0, atol=0)
    torch.testing.assert_close(ema, raw, rtol=0, atol=0)  # a fresh average
    model, ema = loaded([])
    torch.testing.assert_close(model, raw, rtol=0, atol=0)
    torch.testing.assert_close(ema, averaged, rtol=0, atol=0)  # the old average goes on
