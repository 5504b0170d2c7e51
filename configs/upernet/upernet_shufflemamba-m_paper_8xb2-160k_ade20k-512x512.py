# Paper reproduction, middle model (upstream upernet_videomamba_8xb2-160k_ade20k-512x512_
# middle.py): the base paper config with depth 32 x 576 (LayerNorm, as the classification
# model), out_indices (7, 15, 23, 31), drop-path 0.3, lr 6e-5.
_base_ = './upernet_shufflemamba-b_paper_8xb2-160k_ade20k-512x512.py'
embed_dims = 576
model = dict(
    backbone=dict(arch='middle', norm_type=None, out_indices=(7, 15, 23, 31),
                  drop_path_rate=0.3),
    decode_head=dict(in_channels=[embed_dims] * 4),
    auxiliary_head=dict(in_channels=embed_dims))
