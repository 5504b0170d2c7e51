# The built-in demo: the ShuffleMamba-T recipe on the generated toy dataset
# (tools/dataset_converters/make_toy_data.py cls data/toy_cls), trainable on a CPU in
# a few minutes. Overrides only data, image size, schedule and architecture size.
_base_ = './shufflemamba-t_8xb128_in1k.py'

data_root = 'data/toy_cls'
classes = ('disk', 'square', 'triangle', 'cross')
img_size = 64

model = dict(
    backbone=dict(
        arch=dict(_delete_=True, embed_dims=64, num_layers=4),
        img_size=img_size,
        patch_size=16,
        drop_path_rate=0.0,
        shuffle_rate=0.2,
        mixer_cfg=dict(d_state=8)),
    head=dict(num_classes=len(classes), in_channels=64),
    # mixup/cutmix blur four-class toy labels too much for a few hundred iterations
    train_cfg=dict(_delete_=True),
)
data_preprocessor = dict(num_classes=len(classes))

# the real recipe's random resized crop, at 64 px (without it the model memorises the 128
# training images instead of learning the shapes' colours and outlines: ~65% validation
# top-1 instead of 100%); no RandAugment/erasing (sized for 224 px crops)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomResizedCrop', scale=img_size, backend='pillow', interpolation='bicubic'),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
# as the real recipe's (short side 256 -> centre crop 224), scaled to 64 px: short side
# 73 (= 64 * 256 / 224) -> centre crop 64, so images of any size and shape can be tested
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='ResizeEdge', scale=73, edge='short', backend='pillow',
         interpolation='bicubic'),
    dict(type='CenterCrop', crop_size=img_size),
    dict(type='PackInputs'),
]
train_dataloader = dict(
    batch_size=32,
    num_workers=0,
    persistent_workers=False,
    # an endless sampler: mmengine's iteration loop pauses 2 s at every epoch boundary
    sampler=dict(_delete_=True, type='InfiniteSampler', shuffle=True),
    dataset=dict(
        _delete_=True,
        type='CustomDataset',
        data_root=data_root,
        ann_file='meta/train.txt',
        data_prefix='train',
        metainfo=dict(classes=classes),
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=32,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(
        _delete_=True,
        type='CustomDataset',
        data_root=data_root,
        ann_file='meta/val.txt',
        data_prefix='val',
        metainfo=dict(classes=classes),
        pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='Accuracy', topk=(1, ))
test_evaluator = val_evaluator

# float32 on CPU (the real config's bf16 AmpOptimWrapper needs a GPU); same AdamW
# settings, clipping and no-decay groups as the real config, a higher lr
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=2e-3, weight_decay=0.1, eps=1e-8, betas=(0.9, 0.95)),
    clip_grad=dict(max_norm=3.0),
    paramwise_cfg={{_base_.optim_wrapper.paramwise_cfg}})
# schedule: 240 iterations (60 epochs of 4 batches), 20 warmup iterations
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-2, by_epoch=False, end=20),
    dict(type='CosineAnnealingLR', eta_min=1e-5, by_epoch=False, begin=20, end=240),
]
train_cfg = dict(_delete_=True, by_epoch=False, max_iters=240, val_interval=80)
auto_scale_lr = dict(enable=False, base_batch_size=32)  # lr 2e-3 for 1 x 32
log_processor = dict(by_epoch=False)
default_hooks = dict(
    # validation scalars at their iteration (the codebase default logs them by epoch)
    logger=dict(interval=10, log_metric_by_epoch=False),
    checkpoint=dict(by_epoch=False, interval=80, max_keep_ckpts=2))
custom_hooks = [
    dict(type='EMAHook', momentum=0.05, priority='ABOVE_NORMAL'),
    dict(type='mmshufflemamba.RNGStateHook'),
]
env_cfg = dict(dist_cfg=dict(backend='gloo'))
randomness = dict(seed=0)
