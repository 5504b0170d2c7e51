# Reference scripts (run.sh): ShuffleMamba-B uses drop-path 0.5 and shuffle rate 0.5,
# 300 epochs, at 8 GPUs x 256 with --lr 5e-4 (x 2048 / 512 = 2e-3) and EMA decay 0.9999
# per step (10000 steps = 16 epochs of 625 steps). Here 8 x 128 (half the activations per GPU): lr
# 5e-4 x 1024 / 512 = 1e-3 by upstream's own scaling rule, EMA momentum 5e-5 (20000 steps
# = 16 epochs of 1252 steps), both inherited from the tiny recipe.
_base_ = './shufflemamba-t_8xb128_in1k.py'
model = dict(
    backbone=dict(arch='base', drop_path_rate=0.5, shuffle_rate=0.5),
    head=dict(in_channels=768))
