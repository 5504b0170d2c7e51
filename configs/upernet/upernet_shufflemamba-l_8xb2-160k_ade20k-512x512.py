_base_ = './upernet_shufflemamba-t_8xb2-160k_ade20k-512x512.py'
embed_dims = 1024
model = dict(
    backbone=dict(arch='large', out_indices=(11, 23, 35, 47), drop_path_rate=0.5),
    decode_head=dict(in_channels=[embed_dims] * 4),
    auxiliary_head=dict(in_channels=embed_dims))
