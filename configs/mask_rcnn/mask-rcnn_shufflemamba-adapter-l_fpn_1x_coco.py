# The paper's COCO detector with ShuffleMamba-L, as upstream's
# mask_rcnn_shufflemamba_reg_fpn_coco_large_adapter.py: 1024 wide, 48 LayerNorm blocks,
# drop-path 0.5, 16 deformable heads, groups of 12 blocks, layer decay over 48 + 2 depths.
# Everything else as the base config (see its header).
_base_ = './mask-rcnn_shufflemamba-adapter-b_fpn_1x_coco.py'

embed_dims = 1024
model = dict(
    backbone=dict(
        arch='large',
        norm_type='LN',
        drop_path_rate=0.5,
        deform_num_heads=16,
        interaction_indexes=[[0, 11], [12, 23], [24, 35], [36, 47]]),
    neck=dict(in_channels=[embed_dims] * 4))
