# Vim-S+ (vim_small_patch16_stride8_224_..._midclstok_div2): patch 16 with stride 8
# (27x27 at 224 px), fine-tuned from Vim-S as vim/scripts/ft-vim-s.sh: the Vim-T+ recipe
# (8 GPUs x 128, constant lr 1e-5, wd 1e-8, drop-path 0.0, 30 epochs).
_base_ = './vim-t-stride8_8xb128-30e-ft_in1k.py'

load_from = 'pretrain/vim-s_in1k.pth'  # an mmpretrain checkpoint of Vim-S (converted)
model = dict(
    backbone=dict(arch='small-stride8'),
    head=dict(in_channels=384))
