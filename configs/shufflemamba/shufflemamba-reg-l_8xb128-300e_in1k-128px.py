# ShuffleMamba-Reg-L, stage 1 (300 epochs at 128 px): the Reg-B recipe of this
# stage with the mambar_large_patch16_224 architecture: 16 registers, cls_reduce 8.
# Upstream publishes the recipe's scripts for the base model only; the other sizes
# use its drop-path and shuffle rates.
_base_ = './shufflemamba-reg-b_8xb128-300e_in1k-128px.py'

model = dict(
    backbone=dict(arch='large', num_registers=16),
    head=dict(in_channels=1024, num_registers=16, reduction=8))
