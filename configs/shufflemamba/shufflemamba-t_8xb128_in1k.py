# ShuffleMamba-T (plain Vim-T, head class token) on ImageNet-1k at 224, 8 GPUs x 128.
# DeiT-style recipe of the reference scripts (ShuffleMamba run.sh + main_shuffle.py
# defaults): AdamW (lr 5e-4 per 512 images), wd 0.1, betas (0.9, 0.95), grad clip 3.0,
# 30 warmup epochs from 5e-7 then cosine to 5e-6 (timm's, per epoch), RandAugment,
# random erasing, mixup 0.8 / cutmix 1.0, label smoothing 0.1, repeated augmentation
# (3 repeats), EMA 0.9999 (at upstream's 8 x 256; its horizon in epochs kept here, see
# custom_hooks), bf16 autocast; ShuffleMamba's own initialisation. Upstream's lr is
# lr * total batch / 512 (main_shuffle.py): 5e-4 * 2048 / 512 = 2e-3 at 8 x 256 there,
# 5e-4 * 1024 / 512 = 1e-3 at 8 x 128 here.
# Drop-path and shuffle rates: the reference scripts give them for the base model only
# (0.5 / 0.5); the smaller sizes use our lower values (tiny 0.05 / 0.1).
_base_ = [
    'mmpretrain::_base_/datasets/imagenet_bs64_swin_224.py',
    'mmpretrain::_base_/default_runtime.py',
]
custom_imports = dict(imports=['mmshufflemamba'], allow_failed_imports=False)

model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='mmshufflemamba.ShuffleMamba',
        arch='tiny',
        img_size=224,
        patch_size=16,
        cls_token='head',
        out_type='cls_token',
        drop_path_rate=0.05,
        shuffle_rate=0.1,
        # models_shuffle.py initialises every linear trunc-normal(0.02) with zero bias
        init_scheme='shufflemamba'),
    neck=None,
    head=dict(
        type='LinearClsHead',
        num_classes=1000,
        in_channels=192,
        loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1, mode='original'),
        init_cfg=dict(type='TruncNormal', layer='Linear', std=0.02, bias=0.0)),
    train_cfg=dict(augments=[
        dict(type='Mixup', alpha=0.8),
        dict(type='CutMix', alpha=1.0),
    ]),
)

# main_shuffle.py's default --repeated-aug (DeiT's RASampler; run.sh leaves it on)
train_dataloader = dict(
    batch_size=128, sampler=dict(type='RepeatAugSampler', num_repeats=3, shuffle=True))
val_dataloader = dict(batch_size=128)
test_dataloader = val_dataloader

optim_wrapper = dict(
    type='AmpOptimWrapper',
    dtype='bfloat16',
    optimizer=dict(
        type='AdamW', lr=5e-4 * 1024 / 512, weight_decay=0.1, eps=1e-8, betas=(0.9, 0.95)),
    clip_grad=dict(max_norm=3.0),
    # the parameter groups of upstream's timm create_optimizer: no weight decay for 1-D
    # tensors (norms, biases, D/D_b) and the model's no_weight_decay() names (position
    # embeddings, class/register tokens); everything else, A_log/A_b_log included (2-D),
    # is decayed as upstream does (timm does not read the _no_weight_decay marks)
    paramwise_cfg=dict(
        flat_decay_mult=0.0,
        custom_keys={
            'pos_embed': dict(decay_mult=0.0),
            'cls_token': dict(decay_mult=0.0),
            'register_tokens': dict(decay_mult=0.0),
        }),
)

# timm's cosine as run.sh steps it (per epoch, over all 300 epochs): warm-up from 5e-7
param_scheduler = [
    dict(type='mmshufflemamba.TimmCosineLR', epochs=300, warmup_epochs=30, warmup_lr=5e-7,
         min_lr=5e-6),
]
train_cfg = dict(by_epoch=True, max_epochs=300, val_interval=1)
val_cfg = dict()
test_cfg = dict()
auto_scale_lr = dict(base_batch_size=1024)

# EMA with upstream's horizon in epochs. run.sh: --model-ema-decay 0.9999 per step at
# 8 x 256 (timm ModelEma: ema = 0.9999 * ema + 1e-4 * model), 625 steps per epoch (DeiT's
# RASampler, drop_last), so 1 / 1e-4 = 10000 steps = 16.0 epochs. mmengine's EMA is
# ema = (1 - momentum) * ema + momentum * model; at 8 x 128 (1252 steps per epoch) the
# same horizon takes half the per-step momentum: 5e-5 -> 20000 steps = 16.0 epochs.
custom_hooks = [
    dict(type='EMAHook', momentum=1e-4 * 128 / 256, priority='ABOVE_NORMAL'),
    # saves torch's random state (shuffle permutations) so that --resume is exact
    dict(type='mmshufflemamba.RNGStateHook'),
]

# every rank its own random stream (seed + rank, as upstream's main_shuffle.py): its own
# shuffle permutations, drop-path masks and mixup/cutmix; the data sampler keeps one
# shared seed, so the ranks still split one permutation of the data
randomness = dict(seed=None, diff_rank_seed=True)
