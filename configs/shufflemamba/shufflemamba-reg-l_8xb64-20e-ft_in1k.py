# ShuffleMamba-Reg-L, stage 3 (20 epochs of fine-tuning at 224 px): the Reg-B recipe of this
# stage with the mambar_large_patch16_224 architecture: 16 registers, cls_reduce 8.
# Upstream publishes the recipe's scripts for the base model only; the other sizes
# use its drop-path and shuffle rates.
_base_ = './shufflemamba-reg-b_8xb64-20e-ft_in1k.py'

load_from = 'work_dirs/shufflemamba-reg-l_8xb128-100e_in1k/epoch_100.pth'
model = dict(
    backbone=dict(arch='large', num_registers=16),
    head=dict(in_channels=1024, num_registers=16, reduction=8))
