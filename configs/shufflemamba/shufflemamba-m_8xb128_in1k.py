_base_ = './shufflemamba-t_8xb128_in1k.py'
model = dict(
    backbone=dict(arch='middle', drop_path_rate=0.3, shuffle_rate=0.4),
    head=dict(in_channels=576))
