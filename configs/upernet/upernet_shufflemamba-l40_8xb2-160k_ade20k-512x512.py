_base_ = './upernet_shufflemamba-t_8xb2-160k_ade20k-512x512.py'
# the 40-layer large model (mambar_large_patch16_224_40) of the reference segmentation
# configs: drop-path 0.2, lr 3e-5, grad clip 3.0
embed_dims = 1024
model = dict(
    backbone=dict(arch='large-40', out_indices=(9, 19, 29, 39), drop_path_rate=0.2),
    decode_head=dict(in_channels=[embed_dims] * 4),
    auxiliary_head=dict(in_channels=embed_dims))
optim_wrapper = dict(optimizer=dict(lr=3e-5), clip_grad=dict(max_norm=3.0))
