_base_ = './upernet_shufflemamba-t_8xb2-160k_ade20k-512x512.py'
# the large model of the reference segmentation configs (depth 48, as the Reg-L weights):
# drop-path 0.3, lr 3e-5, grad clip 5.0
embed_dims = 1024
model = dict(
    backbone=dict(arch='large', out_indices=(11, 23, 35, 47), drop_path_rate=0.3),
    decode_head=dict(in_channels=[embed_dims] * 4),
    auxiliary_head=dict(in_channels=embed_dims))
optim_wrapper = dict(optimizer=dict(lr=3e-5), clip_grad=dict(max_norm=5.0))
