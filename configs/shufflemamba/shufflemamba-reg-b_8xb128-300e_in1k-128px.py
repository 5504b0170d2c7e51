# ShuffleMamba-Reg-B, stage 1 of the Mamba-Reg recipe (reference run_reg.sh): 300 epochs
# at 128 px, lr 5e-4, wd 0.05, drop-path 0.1, shuffle 0.1, 3-Augment, no label smoothing.
# Stage 2: shufflemamba-reg-b_8xb128-100e_in1k.py, stage 3: ..._8xb64-20e-ft_in1k.py.
_base_ = './shufflemamba-t_8xb128_in1k.py'

num_registers = 12
model = dict(
    backbone=dict(arch='base', img_size=128, cls_token=None, num_registers=num_registers,
                  out_type='registers', drop_path_rate=0.1, shuffle_rate=0.1),
    # reduction 8 per register (as Mamba-Reg-L) gives the ~98M parameters reported for
    # ShuffleMamba-Reg-B; concatenating the raw registers would give 106M
    head=dict(_delete_=True, type='mmshufflemamba.RegisterClsHead', num_classes=1000,
              in_channels=768, num_registers=num_registers, reduction=8,
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
        [dict(type='GaussianBlur', radius=1.0, prob=1.0)],
    ]),
    dict(type='ColorJitter', brightness=0.3, contrast=0.3, saturation=0.3),
    dict(type='PackInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='ResizeEdge', scale=146, edge='short', backend='pillow',
         interpolation='bicubic'),
    dict(type='CenterCrop', crop_size=128),
    dict(type='PackInputs'),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader

optim_wrapper = dict(optimizer=dict(lr=5e-4 * 1024 / 512, weight_decay=0.05))
