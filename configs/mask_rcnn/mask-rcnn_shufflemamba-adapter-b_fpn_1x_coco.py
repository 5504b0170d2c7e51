# The paper's COCO detector: Mask R-CNN + FPN on ShuffleMamba-B with upstream's ViT-Adapter
# (mmshufflemamba.ShuffleMambaAdapter), item by item as upstream ShuffleMamba's
# detection/configs/shufflemamba/mask_rcnn_shufflemamba_reg_fpn_coco_base_adapter.py with
# its template.py. Upstream's detection _base_ files are mmdet 3.3.0's, unchanged but for
# data_root, so they are inherited from mmdet here:
# - backbone: 768 wide, 24 LayerNorm blocks (rms_norm=False), residual in fp32,
#   img_size 224 (pos_embed resized at every forward), drop-path 0.3, shuffle 0, no
#   dropout; adapter: conv_inplane 64, n_points 4, 12 deformable heads, deform_ratio 0.5,
#   cffn_ratio 0.25, groups [[0, 5], [6, 11], [12, 17], [18, 23]], SyncBN per level;
# - FPN (4 x 768 -> 256, 5 outputs) with SyncBN;
# - AdamW lr 1e-4, betas (0.9, 0.999), wd 0.05; layer decay 0.9 over 24 + 2 depths, as
#   upstream's MyLayerDecayOptimizerConstructor assigns them (embeddings 0, block i at
#   i + 1, everything else at the top); weight decay on every tensor of 2 or more dims:
#   that constructor ignores the config's custom_keys, and its name exemptions
#   ('pos_embed', 'cls_token') never match the 'backbone.'-prefixed names, so pos_embed,
#   A_log, A_b_log and level_embed are decayed there (no_decay='ndim' below);
# - 12 epochs, linear warm-up from 0.001 over 1000 iterations, steps at epochs 8 and 11;
#   8 GPUs x 2 images, 4 workers; no gradient clipping; no fp16.
# A LayerNorm backbone needs LayerNorm classification weights (see
# ../upernet/upernet_shufflemamba-b_paper_8xb2-160k_ade20k-512x512.py for RMSNorm ones).
# Add them in a child config:
#   model = dict(backbone=dict(init_cfg=dict(type='Pretrained', checkpoint='...pth',
#                                            prefix='backbone.')))
# The adapter's new modules are reported as initialised; every other key must fit.
_base_ = [
    'mmdet::_base_/models/mask-rcnn_r50_fpn.py',
    'mmdet::_base_/datasets/coco_instance.py',
    'mmdet::_base_/schedules/schedule_1x.py',
    'mmdet::_base_/default_runtime.py',
]
custom_imports = dict(imports=['mmshufflemamba'], allow_failed_imports=False)

embed_dims = 768
model = dict(
    backbone=dict(
        _delete_=True,
        type='mmshufflemamba.ShuffleMambaAdapter',
        arch='base',
        norm_type='LN',
        img_size=224,
        patch_size=16,
        drop_rate=0.0,
        drop_path_rate=0.3,
        shuffle_rate=0.0,
        residual_in_fp32=True,
        conv_inplane=64,
        n_points=4,
        deform_num_heads=12,
        cffn_ratio=0.25,
        deform_ratio=0.5,
        interaction_indexes=[[0, 5], [6, 11], [12, 17], [18, 23]],
        adapter_norm='SyncBN'),
    neck=dict(
        in_channels=[embed_dims] * 4,
        out_channels=256,
        num_outs=5,
        norm_cfg=dict(type='SyncBN', requires_grad=True)))

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    constructor='mmshufflemamba.LayerDecayOptimWrapperConstructor',
    paramwise_cfg=dict(layer_decay_rate=0.9, no_decay='ndim'))
max_epochs = 12
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=1000),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[8, 11],
         gamma=0.1),
]
train_dataloader = dict(batch_size=2, num_workers=4)
# saves torch's random state (shuffle permutations, drop-path) so that --resume is exact
custom_hooks = [dict(type='mmshufflemamba.RNGStateHook')]
# lr 1e-4 is for 8 GPUs x 2 images (upstream's and mmdet's base_batch_size 16);
# --auto-scale-lr scales it to the real total batch
auto_scale_lr = dict(enable=False, base_batch_size=16)
# every rank its own random stream (seed + rank, as upstream's main scripts); the data
# sampler keeps one shared seed, so the ranks still split one permutation of the data
randomness = dict(seed=None, diff_rank_seed=True)
