_base_ = './mask-rcnn_shufflemamba-t_fpn_ms-3x_coco.py'
embed_dims = 768
model = dict(
    backbone=dict(arch='base', drop_path_rate=0.3),
    neck=dict(in_channels=[embed_dims] * 4))
