# UperNet + FCN auxiliary head with a plain ShuffleMamba-T backbone on ADE20K 512x512,
# 160k iterations, 8 GPUs x 2 images. AdamW with layer-wise lr decay, linear warmup then
# poly decay, slide inference. The backbone makes the stride 4/8/16/32 pyramid itself.
_base_ = [
    'mmseg::_base_/models/upernet_r50.py',
    'mmseg::_base_/datasets/ade20k.py',
    'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_160k.py',
]
custom_imports = dict(imports=['mmshufflemamba'], allow_failed_imports=False)

crop_size = (512, 512)
embed_dims = 192
# To start from ImageNet weights (an mmpretrain checkpoint of the same arch, e.g. made
# with configs/shufflemamba/ or tools/model_converters/), add in a child config:
#   model = dict(backbone=dict(init_cfg=dict(
#       type='Pretrained', checkpoint='pretrain/shufflemamba-t_in1k.pth', prefix='backbone.')))
# Its class-token slot is dropped (ckpt_cls_token says where it sits: 'head' by default,
# 'middle' for Vim's midclstok weights) and every key is checked and logged.

# test_cfg: pad test images to multiples of 16 (the patch size; the backbone takes no
# other sides) and crop the prediction back, so any image size can be segmented in slide
# and whole mode
data_preprocessor = dict(size=crop_size, test_cfg=dict(size_divisor=16))
model = dict(
    data_preprocessor=data_preprocessor,
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='mmshufflemamba.ShuffleMamba',
        arch='tiny',
        img_size=crop_size,
        patch_size=16,
        cls_token=None,
        out_type='featmap',
        out_indices=(5, 11, 17, 23),
        out_scales=(4, 2, 1, 0.5),
        pyramid_norm='LN2d',
        drop_path_rate=0.1,
        # the paper fine-tunes dense prediction without shuffle; set > 0 to turn it on
        shuffle_rate=0.0),
    decode_head=dict(in_channels=[embed_dims] * 4, num_classes=150),
    auxiliary_head=dict(in_channels=embed_dims, in_index=2, num_classes=150),
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(341, 341)),
)

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=6e-5, betas=(0.9, 0.999), weight_decay=0.01),
    constructor='mmshufflemamba.LayerDecayOptimWrapperConstructor',
    paramwise_cfg=dict(layer_decay_rate=0.9))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', power=1.0, eta_min=0.0, by_epoch=False, begin=1500, end=160000),
]
train_dataloader = dict(batch_size=2)
val_dataloader = dict(batch_size=1)
test_dataloader = val_dataloader
# saves torch's random state (shuffle permutations, drop-path) so that --resume is exact
custom_hooks = [dict(type='mmshufflemamba.RNGStateHook')]
# lr 6e-5 is for 8 GPUs x 2 images; --auto-scale-lr scales it to the real total batch
auto_scale_lr = dict(enable=False, base_batch_size=16)
# every rank its own random stream (seed + rank, as upstream's main scripts); the data
# sampler keeps one shared seed, so the ranks still split one permutation of the data
randomness = dict(seed=None, diff_rank_seed=True)
