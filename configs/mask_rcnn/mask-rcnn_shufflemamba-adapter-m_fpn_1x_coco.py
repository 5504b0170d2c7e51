# The paper's COCO detector with ShuffleMamba-M, as upstream's
# mask_rcnn_shufflemamba_reg_fpn_coco_middle_adapter.py: 576 wide, 32 LayerNorm blocks,
# drop-path 0.4, 12 deformable heads, groups of 8 blocks, layer decay over 32 + 2 depths.
# Everything else as the base config (see its header).
_base_ = './mask-rcnn_shufflemamba-adapter-b_fpn_1x_coco.py'

embed_dims = 576
model = dict(
    backbone=dict(
        arch='middle',
        norm_type='LN',
        drop_path_rate=0.4,
        deform_num_heads=12,
        interaction_indexes=[[0, 7], [8, 15], [16, 23], [24, 31]]),
    neck=dict(in_channels=[embed_dims] * 4))
