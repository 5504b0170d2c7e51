# Paper reproduction, 40-layer large model (upstream upernet_videomamba_8xb2-160k_ade20k-
# 512x512_large.py): depth 40 x 1024, out_indices (9, 19, 29, 39), drop-path 0.2, lr 3e-5,
# grad clip 3.0. Upstream's config leaves rms_norm at its backbone's default (False), so
# this backbone is LayerNorm although mambar_large_patch16_224_40 is RMSNorm (see the base
# paper config on loading such weights).
_base_ = './upernet_shufflemamba-b_paper_8xb2-160k_ade20k-512x512.py'
embed_dims = 1024
model = dict(
    backbone=dict(arch=dict(_delete_=True, embed_dims=1024, num_layers=40, norm_type='LN'),
                  norm_type=None,
                  out_indices=(9, 19, 29, 39), drop_path_rate=0.2),
    decode_head=dict(in_channels=[embed_dims] * 4),
    auxiliary_head=dict(in_channels=embed_dims))
optim_wrapper = dict(optimizer=dict(lr=3e-5), clip_grad=dict(max_norm=3.0))
