_base_ = './mask-rcnn_shufflemamba-t_fpn_ms-3x_coco.py'
embed_dims = 384
model = dict(
    backbone=dict(arch='small', drop_path_rate=0.2),
    neck=dict(in_channels=[embed_dims] * 4))
