# The adapter detector on the generated toy COCO-layout data (make_toy_data.py coco
# data/toy_coco): the toy Mask R-CNN recipe (./mask-rcnn_shufflemamba-toy_fpn_1x_toycoco.py:
# data, heads, AdamW lr 1e-3, warm-up then cosine) with the backbone swapped for a
# 4-block ShuffleMambaAdapter, one block per interaction group. GN in the spatial prior
# module and on the levels (one process, batch 4: SyncBN has nothing to sync).
# Box / mask mAP 0.710 / 0.745 after 100 iterations (seed 0, CPU; the slow test's run;
# 0.645 / 0.693 with the toy recipe's earlier four mask convs).
# With the toy recipe's earlier 512 sampled RoIs per image: 0.397 / 0.442 at iteration 50,
# 0.617 / 0.641 at 100, 0.745 / 0.775 at 150. Until the adapter's maps were made
# contiguous it stayed near 0 (box mAP 0.001): mmcv's RoIAlign read the channels-last
# views as if contiguous.
_base_ = './mask-rcnn_shufflemamba-toy_fpn_1x_toycoco.py'

embed_dims = 64
model = dict(
    backbone=dict(
        _delete_=True,
        type='mmshufflemamba.ShuffleMambaAdapter',
        arch=dict(embed_dims=embed_dims, num_layers=4),
        img_size=128,
        mixer_cfg=dict(d_state=8),
        conv_inplane=16,
        n_points=4,
        deform_num_heads=4,
        deform_ratio=0.5,
        interaction_indexes=[[0, 0], [1, 1], [2, 2], [3, 3]],
        adapter_norm='GN'),
    neck=dict(in_channels=[embed_dims] * 4))
