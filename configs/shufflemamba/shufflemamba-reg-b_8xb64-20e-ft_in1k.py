# ShuffleMamba-Reg-B, stage 3 (run_reg.sh): 20 epochs of fine-tuning at 224 px from the
# stage-2 weights, 8 GPUs x 64, lr 1e-5 per 512 images, wd 0.1, drop-path 0.4, shuffle 0.1,
# label smoothing 0.1 (with mixup/cutmix), RandAugment rand-m9-mstd0.5-inc1, no repeated
# augmentation, full-image evaluation crop (crop ratio 1.0). main_reg.py's defaults still
# apply: 5 warmup epochs from 1e-6, min lr 1e-5 (= the lr: constant after warmup), betas
# (0.9, 0.999), no grad clip, EMA 0.99996.
_base_ = './shufflemamba-reg-b_8xb128-100e_in1k.py'

load_from = 'work_dirs/shufflemamba-reg-b_8xb128-100e_in1k/epoch_100.pth'
model = dict(head=dict(loss=dict(_delete_=True, type='LabelSmoothLoss',
                                 label_smooth_val=0.1, mode='original')))

bgr_mean = [103.53, 116.28, 123.675]
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomResizedCrop', scale=224, backend='pillow', interpolation='bicubic'),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='RandAugment', policies='timm_increasing', num_policies=2, total_level=10,
         magnitude_level=9, magnitude_std=0.5,
         hparams=dict(pad_val=[round(x) for x in bgr_mean], interpolation='bicubic')),
    dict(type='PackInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='ResizeEdge', scale=224, edge='short', backend='pillow',
         interpolation='bicubic'),
    dict(type='CenterCrop', crop_size=224),
    dict(type='PackInputs'),
]
train_dataloader = dict(
    batch_size=64,
    sampler=dict(_delete_=True, type='DefaultSampler', shuffle=True),  # --no-repeated-aug
    dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader

lr = 1e-5 * 512 / 512
optim_wrapper = dict(optimizer=dict(lr=lr, weight_decay=0.1))
param_scheduler = [  # flat at 1e-5 after the warm-up: min lr = lr
    dict(type='mmshufflemamba.TimmCosineLR', epochs=20, warmup_epochs=5, warmup_lr=1e-6,
         min_lr=1e-5),
]
train_cfg = dict(max_epochs=20)
auto_scale_lr = dict(base_batch_size=512)
