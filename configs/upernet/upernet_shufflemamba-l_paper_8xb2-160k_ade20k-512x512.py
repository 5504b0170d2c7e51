# Paper reproduction, large model on the Reg-L weights (upstream upernet_shufflemamba_
# 8xb2-160k_ade20k-512x512_large_reg.py): depth 48 x 1024, RMSNorm, out_indices
# (11, 23, 35, 47), drop-path 0.3, lr 3e-5, grad clip 5.0. Upstream's backbone has no
# registers: loading Reg-L weights drops register_tokens/pos_embed_reg (logged).
_base_ = './upernet_shufflemamba-b_paper_8xb2-160k_ade20k-512x512.py'
embed_dims = 1024
model = dict(
    backbone=dict(arch='large', norm_type=None, out_indices=(11, 23, 35, 47),
                  drop_path_rate=0.3),
    decode_head=dict(in_channels=[embed_dims] * 4),
    auxiliary_head=dict(in_channels=embed_dims))
optim_wrapper = dict(optimizer=dict(lr=3e-5), clip_grad=dict(max_norm=5.0))
