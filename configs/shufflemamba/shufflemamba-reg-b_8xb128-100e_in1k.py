# ShuffleMamba-Reg-B, stage 2 (run_reg.sh): 100 epochs at 224 px from the stage-1 weights
# (the position embedding is resized when they load, and the resize is logged), lr 2e-4
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
        [dict(type='GaussianBlur', radius=1.0, prob=1.0)],
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
    dict(type='LinearLR', start_factor=1e-6 / lr, by_epoch=True, end=5,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-5, by_epoch=True, begin=5),
]
train_cfg = dict(max_epochs=100)
