# Paper reproduction: upstream ShuffleMamba's ADE20K settings for the base model
# (segmentation/configs/shufflemamba/upernet_shufflemamba_8xb2-160k_ade20k-512x512_base.py),
# not this package's default recipe (../upernet/README.md compares the two):
# - four stride-16 maps straight into UPerHead (no pyramid), the FCN auxiliary head on
#   level 3;
# - intermediate maps are the blocks' *mixer outputs* (intermediate_output='mixer'), the
#   last one after norm_f;
# - the position embedding stays at the 14x14 grid of the 224 px weights and is resized to
#   the input's grid at every forward (img_size=224), as upstream;
# - AdamW lr 6e-5, wd 0.01, no layer decay, upstream's no-decay keys (kept as they are:
#   '.D' matches D and D_b, '.A_log' does not match A_b_log, which is decayed), no grad
#   clip; drop-path 0.2, shuffle 0; validation every 8000 iterations and seed 873369272
#   (upstream's _base_ files);
# - a LayerNorm backbone (upstream's rms_norm=False): it needs LayerNorm classification
#   weights. Upstream loads weights with strict=False, so its RMSNorm base checkpoints
#   load into these LayerNorm blocks (zero LN biases) without a word; ours refuse a norm
#   mismatch. To reproduce upstream's model from RMSNorm weights on purpose, convert them
#   with tools/model_converters/reference2mmpretrain.py --rmsnorm-to-layernorm.
# Add the weights in a child config:
#   model = dict(backbone=dict(init_cfg=dict(type='Pretrained', checkpoint='...pth',
#                                            prefix='backbone.')))
_base_ = [
    'mmseg::_base_/models/upernet_r50.py',
    'mmseg::_base_/datasets/ade20k.py',
    'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_160k.py',
]
custom_imports = dict(imports=['mmshufflemamba'], allow_failed_imports=False)

crop_size = (512, 512)
embed_dims = 768
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
        arch='base',
        norm_type='LN',
        img_size=224,
        patch_size=16,
        cls_token=None,
        ckpt_cls_token='head',
        out_type='featmap',
        out_indices=(5, 11, 17, 23),
        intermediate_output='mixer',
        drop_path_rate=0.2,
        shuffle_rate=0.0),
    decode_head=dict(in_channels=[embed_dims] * 4, in_index=[0, 1, 2, 3], num_classes=150),
    auxiliary_head=dict(in_channels=embed_dims, in_index=3, num_classes=150),
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(341, 341)),
)

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=6e-5, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(
        custom_keys={
            '.pos_embed': dict(decay_mult=0.0),
            '.cls_token': dict(decay_mult=0.0),
            'norm': dict(decay_mult=0.0),
            '.A_log': dict(decay_mult=0.0),
            '.D': dict(decay_mult=0.0),
        }))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', power=1.0, eta_min=0.0, by_epoch=False, begin=1500, end=160000),
]
train_dataloader = dict(batch_size=2)
val_dataloader = dict(batch_size=1)
test_dataloader = val_dataloader
train_cfg = dict(val_interval=8000)
# every rank its own random stream (seed + rank); the data sampler keeps the shared seed
randomness = dict(seed=873369272, diff_rank_seed=True)
# lr 6e-5 is for 8 GPUs x 2 images; --auto-scale-lr scales it to the real total batch
auto_scale_lr = dict(enable=False, base_batch_size=16)
