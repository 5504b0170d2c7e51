_base_ = './upernet_shufflemamba-t_8xb2-160k_ade20k-512x512.py'
# drop-path as in the reference segmentation configs (middle 0.3, base 0.2)
embed_dims = 768
model = dict(
    backbone=dict(arch='base', drop_path_rate=0.2),
    decode_head=dict(in_channels=[embed_dims] * 4),
    auxiliary_head=dict(in_channels=embed_dims))
