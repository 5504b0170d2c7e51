# Vim-T (hustvl/Vim vim_tiny_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_
# midclstok_div2): the plain Vim, class token in the middle, no shuffle. Recipe of
# vim/scripts/pt-vim-t.sh with main.py's defaults: 300 epochs, 8 GPUs x 128, AdamW lr 5e-4
# per 512 images, wd 0.1, betas (0.9, 0.999), no grad clip, 5 warmup epochs from 1e-6 then
# cosine to 1e-5, drop-path 0.0, RandAugment, random erasing 0.25, mixup 0.8 / cutmix 1.0,
# label smoothing 0.1, repeated augmentation, EMA 0.99996, float32 (--no_amp).
# Published Vim-T weights: convert with tools/model_converters/reference2mmpretrain.py and
# evaluate with tools/test.py and this config.
_base_ = '../shufflemamba/shufflemamba-t_8xb128_in1k.py'

model = dict(backbone=dict(arch='tiny', cls_token='middle', drop_path_rate=0.0,
                           shuffle_rate=0.0, init_scheme='vim'))

lr = 5e-4 * 1024 / 512
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=lr, weight_decay=0.1, eps=1e-8, betas=(0.9, 0.999)),
    paramwise_cfg={{_base_.optim_wrapper.paramwise_cfg}})
param_scheduler = [  # timm's cosine, per epoch
    dict(type='mmshufflemamba.TimmCosineLR', epochs=300, warmup_epochs=5, warmup_lr=1e-6,
         min_lr=1e-5),
]
custom_hooks = [
    dict(type='EMAHook', momentum=1 - 0.99996, priority='ABOVE_NORMAL'),
    dict(type='mmshufflemamba.RNGStateHook'),
]
