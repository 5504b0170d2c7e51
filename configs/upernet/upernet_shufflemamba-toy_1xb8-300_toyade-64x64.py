# The built-in dense-prediction demo: the ShuffleMamba-T UperNet recipe on the generated
# toy ADE20K-layout dataset (tools/dataset_converters/make_toy_data.py ade data/toy_ade),
# trainable on a CPU in a few minutes. Overrides only data, sizes, schedule and
# architecture size.
_base_ = './upernet_shufflemamba-t_8xb2-160k_ade20k-512x512.py'

data_root = 'data/toy_ade'
crop_size = (64, 64)
embed_dims = 64
# The toy data's own classes (mmshufflemamba.datasets.TOY_ADE_CLASSES / TOY_ADE_PALETTE:
# label values 1..5 on disk, 0 = the ignored frame), coloured as they are drawn. The
# generic BaseSegDataset takes them; ADE20KDataset would insist on ADE20K's 150.
metainfo = dict(
    classes=('background', 'disk', 'square', 'triangle', 'cross'),
    palette=[[110, 110, 110], [230, 60, 50], [60, 200, 70], [50, 90, 230], [230, 210, 40]])
num_classes = len(metainfo['classes'])
toy_dataset = dict(
    type='BaseSegDataset',
    metainfo=metainfo,
    data_root=data_root,
    img_suffix='.jpg',
    seg_map_suffix='.png',
    reduce_zero_label=True)

data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(
        arch=dict(_delete_=True, embed_dims=embed_dims, num_layers=4),
        img_size=crop_size,
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.0,
        mixer_cfg=dict(d_state=8)),
    decode_head=dict(in_channels=[embed_dims] * 4, channels=64, num_classes=num_classes),
    auxiliary_head=dict(in_channels=embed_dims, channels=32, num_classes=num_classes),
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(43, 43)),
)

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomResize', scale=(256, 64), ratio_range=(0.75, 1.5), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(256, 64), keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(
    batch_size=8,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(**toy_dataset, pipeline=train_pipeline))
val_dataloader = dict(
    num_workers=0,
    persistent_workers=False,
    dataset=dict(**toy_dataset, pipeline=test_pipeline))
test_dataloader = val_dataloader

optim_wrapper = dict(optimizer=dict(lr=1e-3, weight_decay=0.01))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-2, by_epoch=False, begin=0, end=30),
    dict(type='PolyLR', power=1.0, eta_min=0.0, by_epoch=False, begin=30, end=300),
]
# validation (12 images) every 50 iterations: the training curve shows mIoU rising
train_cfg = dict(max_iters=300, val_interval=50)
default_hooks = dict(
    logger=dict(interval=20),
    checkpoint=dict(interval=300, max_keep_ckpts=1),
    # mmseg's tools/test.py --show-dir draws every 50th image by default: all 12 here
    visualization=dict(interval=1))
env_cfg = dict(dist_cfg=dict(backend='gloo'))
randomness = dict(seed=0)
auto_scale_lr = dict(enable=False, base_batch_size=8)  # lr 1e-3 for 1 x 8
# test-time augmentation (tools/test.py --tta): the test resize, then 3 scales x flips
tta_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(256, 64), keep_ratio=True),
    dict(type='TestTimeAug', transforms=[
        [dict(type='Resize', scale_factor=r, keep_ratio=True) for r in (0.75, 1.0, 1.25)],
        [dict(type='RandomFlip', prob=0.0, direction='horizontal'),
         dict(type='RandomFlip', prob=1.0, direction='horizontal')],
        [dict(type='LoadAnnotations', reduce_zero_label=True)],
        [dict(type='PackSegInputs')],
    ]),
]
