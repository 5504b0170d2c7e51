# ShuffleMamba-Reg-S, stage 1 (300 epochs at 128 px): the Reg-B recipe of this
# stage with the mambar_small_patch16_224 architecture: 12 registers, cls_reduce 2.
# Upstream publishes the recipe's scripts for the base model only; the other sizes
# use its drop-path and shuffle rates.
_base_ = './shufflemamba-reg-b_8xb128-300e_in1k-128px.py'

model = dict(
    backbone=dict(arch='small', num_registers=12),
    head=dict(in_channels=384, num_registers=12, reduction=2))
