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
        pyramid_norm='LN2d',
        drop_path_rate=0.1,
        shuffle_rate=0.0),
    neck=dict(in_channels=[embed_dims] * 4))

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    constructor='mmshufflemamba.LayerDecayOptimWrapperConstructor',
    paramwise_cfg=dict(layer_decay_rate=0.9))
# saves torch's random state (shuffle permutations, drop-path) so that --resume is exact
custom_hooks = [dict(type='mmshufflemamba.RNGStateHook')]
