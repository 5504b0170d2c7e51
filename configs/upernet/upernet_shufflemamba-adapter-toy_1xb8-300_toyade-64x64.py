# The adapter segmentor on the generated toy ADE20K-layout data (make_toy_data.py ade
# data/toy_ade): the toy UperNet recipe (./upernet_shufflemamba-toy_1xb8-300_toyade-64x64.py:
# data, head sizes, AdamW lr 1e-3, 300 iterations) with the backbone swapped for a 4-block
# ShuffleMambaAdapter, one block per interaction group, BatchNorm in the spatial prior
# module and on the levels (one process, batch 8).
_base_ = './upernet_shufflemamba-toy_1xb8-300_toyade-64x64.py'

embed_dims = 64
data_preprocessor = dict(test_cfg=dict(size_divisor=32))
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(
        _delete_=True,
        type='mmshufflemamba.ShuffleMambaAdapter',
        arch=dict(embed_dims=embed_dims, num_layers=4),
        img_size=64,
        mixer_cfg=dict(d_state=8),
        conv_inplane=16,
        n_points=4,
        deform_num_heads=4,
        deform_ratio=0.5,
        interaction_indexes=[[0, 0], [1, 1], [2, 2], [3, 3]],
        adapter_norm='BN'))
