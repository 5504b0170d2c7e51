# The built-in detection demo: the ShuffleMamba-T Mask R-CNN recipe on the generated toy
# COCO-layout dataset (tools/dataset_converters/make_toy_data.py coco data/toy_coco).
# Overrides only data (root, classes), sizes, schedule, architecture size and the pyramid's
# norm (GN: one process, batch 4; the real configs' SyncBN needs several GPUs to see more
# than 2 images). AdamW lr 1e-3 (the real recipe's 1e-4 is for 90k iterations): 10
# iterations of warm-up, then cosine decay: bbox/segm mAP 0.785/0.785 after 150 iterations
# (tools/demo.sh mask-rcnn, tools/test.py on the last checkpoint).
_base_ = './mask-rcnn_shufflemamba-t_fpn_1x_coco.py'

data_root = 'data/toy_coco/'
# the toy data's classes (mmshufflemamba.datasets.TOY_COCO_CLASSES / TOY_COCO_PALETTE),
# coloured as they are drawn
metainfo = dict(
    classes=('disk', 'square', 'triangle'),
    palette=[(230, 60, 50), (60, 200, 70), (50, 90, 230)])
num_classes = 3
embed_dims = 64

model = dict(
    backbone=dict(
        arch=dict(_delete_=True, embed_dims=embed_dims, num_layers=4),
        img_size=128,
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.0,
        pyramid_norm='GN',
        mixer_cfg=dict(d_state=8)),
    neck=dict(in_channels=[embed_dims] * 4, out_channels=64),
    rpn_head=dict(in_channels=64, feat_channels=64),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=64),
        bbox_head=dict(in_channels=64, fc_out_channels=128, num_classes=num_classes),
        mask_roi_extractor=dict(out_channels=64),
        # two convs before the 14 x 14 mask logits (mmdet's four are sized for COCO's
        # objects): once the RPN finds the shapes, up to 32 of the 128 RoIs per image are
        # positives and the four convs were the largest cost of a step. With two, a
        # 150-iteration run took 0.89x / 0.92x the time and ended higher: box / mask mAP
        # 0.785 / 0.785 against 0.734 / 0.771 (seed 0), 0.810 / 0.841 against 0.768 /
        # 0.781 (seed 1), its last validation, one run each
        mask_head=dict(in_channels=64, conv_out_channels=64, num_convs=2,
                       num_classes=num_classes)),
    # Proposals and sampled RoIs sized for 128 px images with a few shapes each (mmdet's
    # 2000 / 1000 proposals and 512 RoIs per image are sized for 1333 x 800 COCO images).
    # With 512, RoIAlign's forward and backward over 2048 RoIs per batch were 38% of a
    # training step on CPU (torch profiler); with 128 a step took 0.29x the time (two
    # runs one after the other, one thread), and the demo's 150 iterations reach box /
    # mask mAP 0.69 / 0.71 instead of 0.58 / 0.69 (with mmdet's four mask convs).
    train_cfg=dict(
        rpn_proposal=dict(nms_pre=1000, max_per_img=500),
        rcnn=dict(sampler=dict(num=128))))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=(128, 128), keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(128, 128), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(
    batch_size=4,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    batch_sampler=None,
    dataset=dict(data_root=data_root, metainfo=metainfo, pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(data_root=data_root, metainfo=metainfo, pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val2017.json')
test_evaluator = val_evaluator

optim_wrapper = dict(optimizer=dict(lr=1e-3))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=10),
    dict(type='CosineAnnealingLR', eta_min=1e-5, by_epoch=False, begin=10, end=150),
]
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=150, val_interval=50)
log_processor = dict(by_epoch=False)
default_hooks = dict(
    # validation scalars at their iteration (the codebase default logs them by epoch)
    logger=dict(interval=10, log_metric_by_epoch=False),
    checkpoint=dict(by_epoch=False, interval=150, max_keep_ckpts=1))
env_cfg = dict(dist_cfg=dict(backend='gloo'))
randomness = dict(seed=0)
auto_scale_lr = dict(enable=False, base_batch_size=4)  # lr 1e-3 for 1 x 4
