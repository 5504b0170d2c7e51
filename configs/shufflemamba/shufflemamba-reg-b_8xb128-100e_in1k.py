# ShuffleMamba-Reg-B, stage 2 (run_reg.sh): 100 epochs at 224 px from the stage-1 raw (non-EMA)
# weights (the position embedding is resized when they load, and the resize is logged), lr 2e-4
# per 512 images, wd 0.05, drop-path 0.4, shuffle 0.1; everything else as stage 1.
_base_ = './shufflemamba-reg-b_8xb128-300e_in1k-128px.py'

load_from = 'work_dirs/shufflemamba-reg-b_8xb128-300e_in1k-128px/epoch_300.pth'
model = dict(backbone=dict(img_size=224, drop_path_rate=0.4))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomResizedCrop', scale=224, backend='pillow', interpolation='bicubic'),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
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
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='ResizeEdge', scale=256, edge='short', backend='pillow',
         interpolation='bicubic'),
    dict(type='CenterCrop', crop_size=224),
    dict(type='PackInputs'),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader

lr = 2e-4 * 1024 / 512
optim_wrapper = dict(optimizer=dict(lr=lr))
param_scheduler = [
    dict(type='mmshufflemamba.TimmCosineLR', epochs=100, warmup_epochs=5, warmup_lr=1e-6,
         min_lr=1e-5),
]
train_cfg = dict(max_epochs=100)
# start from stage 1's raw weights, as upstream's --finetune reads checkpoint['model'];
# a fresh EMA starts from them
custom_hooks = [
    dict(type='mmshufflemamba.LoadRawWeightsHook'),
    dict(type='EMAHook', momentum=1 - 0.99996, priority='ABOVE_NORMAL'),
    dict(type='mmshufflemamba.RNGStateHook'),
]
