# Vim-S (vim_small_patch16_224_..._midclstok_div2): vim/scripts/pt-vim-s.sh, 8 GPUs x 64,
# lr 1e-3 per 512 images, wd 0.05, drop-path 0.05; otherwise as Vim-T's recipe.
_base_ = './vim-t_8xb128-300e_in1k.py'

model = dict(
    backbone=dict(arch='small', drop_path_rate=0.05),
    head=dict(in_channels=384))
train_dataloader = dict(batch_size=64)
optim_wrapper = dict(optimizer=dict(lr=1e-3 * 512 / 512, weight_decay=0.05))
auto_scale_lr = dict(base_batch_size=512)
