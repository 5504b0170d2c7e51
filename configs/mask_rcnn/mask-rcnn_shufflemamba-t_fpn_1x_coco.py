# Mask R-CNN + FPN with a plain ShuffleMamba-T backbone on COCO, 1x schedule (12 epochs),
# 8 GPUs x 2 images, AdamW with layer-wise lr decay. The backbone makes the stride
# 4/8/16/32 pyramid itself; mmdet pads batches to multiples of 32 (the backbone needs 16).
_base_ = [
    'mmdet::_base_/models/mask-rcnn_r50_fpn.py',
    'mmdet::_base_/datasets/coco_instance.py',
    'mmdet::_base_/schedules/schedule_1x.py',
    'mmdet::_base_/default_runtime.py',
]
custom_imports = dict(imports=['mmshufflemamba'], allow_failed_imports=False)

embed_dims = 192
# To start from ImageNet weights (an mmpretrain checkpoint of the same arch, e.g. made
# with configs/shufflemamba/ or tools/model_converters/), add in a child config:
#   model = dict(backbone=dict(init_cfg=dict(
#       type='Pretrained', checkpoint='pretrain/shufflemamba-t_in1k.pth', prefix='backbone.')))
# Its class-token slot is dropped (ckpt_cls_token says where it sits: 'head' by default,
# 'middle' for Vim's midclstok weights) and every key is checked and logged.

model = dict(
    backbone=dict(
        _delete_=True,
        type='mmshufflemamba.ShuffleMamba',
        arch='tiny',
        img_size=1024,
        patch_size=16,
        cls_token=None,
        out_type='featmap',
        out_indices=(5, 11, 17, 23),
        out_scales=(4, 2, 1, 0.5),
        # every level normalised with SyncBN, as upstream's adapter (per-GPU batch 2)
        pyramid_norm='SyncBN',
        drop_path_rate=0.1,
        shuffle_rate=0.0),
    neck=dict(in_channels=[embed_dims] * 4))

# Guards against divergence, as upstream's COCO template (detection/configs/shufflemamba/
# template.py) has them: linear warm-up over the first 1000 iterations from 0.001 x lr
# (mmdet's schedule_1x warms up over 500), no gradient clipping (upstream clips none).
# The backbone normalises every pyramid level (pyramid_norm), as upstream's adapter does
# with SyncBN per level: un-normalised intermediate maps made the toy detector diverge.
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=1000),
    dict(type='MultiStepLR', begin=0, end=12, by_epoch=True, milestones=[8, 11], gamma=0.1),
]
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    constructor='mmshufflemamba.LayerDecayOptimWrapperConstructor',
    paramwise_cfg=dict(layer_decay_rate=0.9))
# saves torch's random state (shuffle permutations, drop-path) so that --resume is exact
custom_hooks = [dict(type='mmshufflemamba.RNGStateHook')]
# lr 1e-4 is for 8 GPUs x 2 images (mmdet's default); --auto-scale-lr scales it
auto_scale_lr = dict(enable=False, base_batch_size=16)
# every rank its own random stream (seed + rank, as upstream's main scripts); the data
# sampler keeps one shared seed, so the ranks still split one permutation of the data
randomness = dict(seed=None, diff_rank_seed=True)
