# The paper's ADE20K adapter model: UperNet on ShuffleMamba-B with upstream's ViT-Adapter,
# as upstream ShuffleMamba's
# segmentation/configs/shufflemamba/upernet_shufflemamba_8xb2-160k_ade20k-512x512_base_adapter.py.
# Its head, optimizer and schedule are those of upstream's plain base config, which
# ./upernet_shufflemamba-b_paper_8xb2-160k_ade20k-512x512.py reproduces (see its header:
# UPerHead on levels 0-3, FCN auxiliary head on level 3, AdamW 6e-5 / wd 0.01 with
# upstream's custom_keys, no layer decay, warm-up 1500 iterations then poly, 8 x 2
# images, validation every 8000 iterations); only the backbone differs:
# - 768 wide, 24 LayerNorm blocks, img_size 224, drop-path 0.2, shuffle 0; adapter:
#   conv_inplane 64, n_points 4, 12 deformable heads, deform_ratio 0.5, cffn_ratio 0.25,
#   groups [[0, 5], [6, 11], [12, 17], [18, 23]], SyncBN per level; outputs at strides
#   4/8/16/32;
# - test images are padded to multiples of 32 (the adapter's stride-32 level).
# Upstream's `fp16 = dict(loss_scale=...)` is an mmcv 1.x key that mmengine ignores: its
# run was fp32 (use --amp for mixed precision here).
_base_ = './upernet_shufflemamba-b_paper_8xb2-160k_ade20k-512x512.py'

data_preprocessor = dict(test_cfg=dict(size_divisor=32))
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(
        _delete_=True,
        type='mmshufflemamba.ShuffleMambaAdapter',
        arch='base',
        norm_type='LN',
        img_size=224,
        patch_size=16,
        drop_rate=0.0,
        drop_path_rate=0.2,
        shuffle_rate=0.0,
        residual_in_fp32=True,
        conv_inplane=64,
        n_points=4,
        deform_num_heads=12,
        cffn_ratio=0.25,
        deform_ratio=0.5,
        interaction_indexes=[[0, 5], [6, 11], [12, 17], [18, 23]],
        adapter_norm='SyncBN'))
