# ShuffleMamba-Reg-T, stage 2 (100 epochs at 224 px): the Reg-B recipe of this
# stage with the mambar_tiny_patch16_224 architecture: 12 registers, cls_reduce 1 (no
# reduction and no norm: the 12 raw registers are concatenated, 12 x 192 -> head).
# Upstream publishes the recipe's scripts for the base model only; the other sizes
# use its drop-path and shuffle rates, batch sizes and learning rates.
_base_ = './shufflemamba-reg-b_8xb128-100e_in1k.py'

load_from = 'work_dirs/shufflemamba-reg-t_8xb128-300e_in1k-128px/epoch_300.pth'
model = dict(
    backbone=dict(arch='tiny', num_registers=12),
    head=dict(in_channels=192, num_registers=12, reduction=1))
