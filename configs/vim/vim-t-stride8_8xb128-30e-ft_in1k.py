# Vim-T+ (vim_tiny_patch16_stride8_224_..._midclstok_div2): patch 16 with stride 8, a
# 27x27 grid at 224 px (729 patches + the middle class token). Fine-tuning at finer
# granularity from Vim-T as vim/scripts/ft-vim-t.sh with main.py's defaults: 30 epochs,
# 8 GPUs x 128, AdamW lr 5e-6 per 512 images with warmup from and minimum at 1e-5 (so a
# constant 1e-5), wd 1e-8, drop-path 0.0, EMA 0.99996, float32. Loading the stride-16
# Vim-T weights resizes pos_embed 14x14 -> 27x27 (logged). Published Vim-T+ weights
# (27x27 grid) convert and evaluate with this config as they are.
_base_ = './vim-t_8xb128-300e_in1k.py'

load_from = 'pretrain/vim-t_in1k.pth'  # an mmpretrain checkpoint of Vim-T (converted)
model = dict(backbone=dict(arch='tiny-stride8'))

lr = 5e-6 * 1024 / 512
optim_wrapper = dict(optimizer=dict(lr=lr, weight_decay=1e-8))
param_scheduler = [
    dict(type='mmshufflemamba.TimmCosineLR', epochs=30, warmup_epochs=5, warmup_lr=1e-5,
         min_lr=1e-5),
]
train_cfg = dict(max_epochs=30)
# vim/main.py --finetune reads checkpoint['model']: the raw weights, not the EMA ones
custom_hooks = [
    dict(type='mmshufflemamba.LoadRawWeightsHook'),
    dict(type='EMAHook', momentum=1 - 0.99996, priority='ABOVE_NORMAL'),
    dict(type='mmshufflemamba.RNGStateHook'),
]
