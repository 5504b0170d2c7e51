# ShuffleMamba-Reg-B, stage 1 of the Mamba-Reg recipe (ShuffleMamba run_reg.sh with
# main_reg.py's defaults): 300 epochs at 128 px, 8 GPUs x 128, AdamW lr 5e-4 per 512
# images, wd 0.05, betas (0.9, 0.999), no grad clip, 5 warmup epochs from 1e-6 then cosine
# to 1e-5 (timm's, per epoch), drop-path 0.1, shuffle 0.1, 3-Augment, mixup 0.8 / cutmix
# 1.0 without label smoothing, no random erasing, repeated augmentation, EMA 0.99996, bf16
# autocast.
# Stage 2: shufflemamba-reg-b_8xb128-100e_in1k.py, stage 3: ..._8xb64-20e-ft_in1k.py.
_base_ = './shufflemamba-t_8xb128_in1k.py'

num_registers = 12
model = dict(
    backbone=dict(arch='base', img_size=128, cls_token=None, num_registers=num_registers,
                  out_type='registers', drop_path_rate=0.1, shuffle_rate=0.1,
                  init_scheme='vim'),  # models_reg.py initialises as Mamba-Reg/Vim
    # mambar_base_patch16_224: 12 registers, cls_reduce 4 (768 -> 192 channels each)
    head=dict(_delete_=True, type='mmshufflemamba.RegisterClsHead', num_classes=1000,
              in_channels=768, num_registers=num_registers, reduction=4,
              loss=dict(type='CrossEntropyLoss', use_soft=True)),
)

bgr_mean = [103.53, 116.28, 123.675]
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomResizedCrop', scale=128, backend='pillow', interpolation='bicubic'),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    # 3-Augment (DeiT III): one of grayscale, solarize, blur per image, then color jitter
    dict(type='RandomChoice', transforms=[
        [dict(type='RandomGrayscale', prob=1.0, keep_channels=True)],
        [dict(type='Solarize', thr=128, prob=1.0)],
        # radius uniform in [0.1, 2.0], as DeiT III's GaussianBlur
        [dict(type='GaussianBlur', magnitude_range=(0.1, 2.0), magnitude_level=10,
              total_level=10, magnitude_std='inf', prob=1.0)],
    ]),
    dict(type='ColorJitter', brightness=0.3, contrast=0.3, saturation=0.3),
    dict(type='PackInputs'),
]
test_pipeline = [  # eval crop ratio 0.875: 146 -> 128
    dict(type='LoadImageFromFile'),
    dict(type='ResizeEdge', scale=146, edge='short', backend='pillow',
         interpolation='bicubic'),
    dict(type='CenterCrop', crop_size=128),
    dict(type='PackInputs'),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader

lr = 5e-4 * 1024 / 512
optim_wrapper = dict(
    optimizer=dict(lr=lr, weight_decay=0.05, betas=(0.9, 0.999)),
    clip_grad=None)
param_scheduler = [  # timm's cosine, per epoch (main_reg.py's defaults)
    dict(type='mmshufflemamba.TimmCosineLR', epochs=300, warmup_epochs=5, warmup_lr=1e-6,
         min_lr=1e-5),
]
custom_hooks = [
    dict(type='EMAHook', momentum=1 - 0.99996, priority='ABOVE_NORMAL'),
    dict(type='mmshufflemamba.RNGStateHook'),
]
