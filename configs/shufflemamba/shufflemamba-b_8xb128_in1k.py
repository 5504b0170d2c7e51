# Reference scripts (run.sh): ShuffleMamba-B uses drop-path 0.5 and shuffle rate 0.5.
_base_ = './shufflemamba-t_8xb128_in1k.py'
model = dict(
    backbone=dict(arch='base', drop_path_rate=0.5, shuffle_rate=0.5),
    head=dict(in_channels=768))
