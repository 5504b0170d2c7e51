# Vim-S (vim_small_patch16_224_..._midclstok_div2): vim/scripts/pt-vim-s.sh, 8 GPUs x 64,
# lr 1e-3 per 512 images, wd 0.05, drop-path 0.05; otherwise as Vim-T's recipe.
_base_ = './vim-t_8xb128-300e_in1k.py'

model = dict(
    backbone=dict(arch='small', drop_path_rate=0.05),
    head=dict(in_channels=384))
train_dataloader = dict(batch_size=64)
lr = 1e-3 * 512 / 512
optim_wrapper = dict(optimizer=dict(lr=lr, weight_decay=0.05))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6 / lr, by_epoch=True, end=5,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-5, by_epoch=True, begin=5),
]
auto_scale_lr = dict(base_batch_size=512)
