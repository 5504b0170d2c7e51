"""FLOPs and parameters of a config's model at an input size.

    python tools/analysis_tools/get_flops.py CONFIG [--shape 512 512]

mmengine's tracing counter sees none of the selective scan (a custom kernel / Python loop),
so its cost is added from the shapes the mixers see, with the formula of
``mmshufflemamba.ops.selective_scan_flops``: ``9 * B * D * L * N`` per scan plus
``7 * B * D * L`` for the ``D`` skip and the ``silu(z)`` gate, two scans (forward and
backward direction) per mixer. FLOPs count a multiply-add as 2 for the scan; mmengine's
counter counts one multiply-add as 1 FLOP, so the scan is converted to that convention
(divided by 2) before adding. Detectors are measured for backbone + neck. Elementwise
ops, activations, norms and pooling are not counted (mmengine's and fvcore's convention).

While counting, the mixers run the scan backend ``'stand_in'`` (``use_scan_backend``): the
unfused path (the fused CPU op would hide its x_proj/dt_proj GEMMs from the tracer) with a
shape-preserving stand-in instead of the scan, which consumes z and the B/C projections
(the tracer prunes whatever feeds nothing). The tracer counts nothing of the scan either
way, and running its per-step loop under the tracer keeps every step's tensors (tiny Mask
R-CNN at 1280x800 ran out of 24 GB).
"""
import argparse

import torch
from mmengine.analysis import FlopAnalyzer
from mmengine.analysis.print_helper import complexity_stats_table
from mmengine.config import DictAction

from mmshufflemamba.models import BiMambaMixer, use_scan_backend
from mmshufflemamba.ops import selective_scan_flops
from mmshufflemamba.utils import TensorForward, build_model_from_config


def count_scan_flops(model: torch.nn.Module, images: torch.Tensor) -> int:
    """Scan FLOPs (multiply-add = 2) of one forward, from the mixers' input shapes."""
    total = 0

    def hook(mixer: BiMambaMixer, inputs, _output):
        nonlocal total
        batch, length, _ = inputs[0].shape
        total += 2 * selective_scan_flops(batch, mixer.d_inner, length, mixer.d_state)

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, BiMambaMixer)]
    with torch.no_grad():
        model(images)
    for handle in handles:
        handle.remove()
    return total


def human(value: float) -> str:
    for unit, scale in (('T', 1e12), ('G', 1e9), ('M', 1e6), ('K', 1e3)):
        if value >= scale:
            return f'{value / scale:.2f}{unit}'
    return f'{value:.0f}'


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config')
    parser.add_argument('--shape', type=int, nargs=2, default=[512, 512], metavar=('H', 'W'))
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    parser.add_argument('--show-table', action='store_true', help='per-module table')
    args = parser.parse_args()

    model, _ = build_model_from_config(args.config, args.cfg_options)
    runner = TensorForward(model).eval()
    images = torch.randn(1, 3, *args.shape)
    with use_scan_backend(runner, 'stand_in'):
        scan_flops = count_scan_flops(runner, images)
        analyzer = FlopAnalyzer(runner, (images, ))
        # the mixers call conv1d/x_proj/dt_proj through their weights (F.conv1d, matmul):
        # those FLOPs are traced and counted in the mixer's row, so mmengine's warning that
        # these submodules "will have zeros for statistics" is wrong for the total
        analyzer.uncalled_modules_warnings(False)
        # elementwise ops, norms' statistics and pooling are left out by convention (as in
        # fvcore); the note under the table says so once instead of a warning per op
        analyzer.unsupported_ops_warnings(False)
        traced = analyzer.total()
    scan_macs = scan_flops // 2  # mmengine's convention: one multiply-add = 1 FLOP
    total = traced + scan_macs
    params = sum(p.numel() for p in model.parameters())
    if args.show_table:
        print(complexity_stats_table(analyzer))
    print('=' * 60)
    print(f'Config:        {args.config}')
    print(f'Input shape:   (1, 3, {args.shape[0]}, {args.shape[1]}) [{runner.covers}]')
    print(f'FLOPs (traced, without the selective scan): {human(traced)}')
    print(f'FLOPs (selective scan, added):               {human(scan_macs)}')
    print(f'FLOPs (total):                               {human(total)}')
    print(f'Params:                                      {human(params)}')
    print('Counted: convolutions, linear layers and matmuls (one multiply-add = one FLOP,')
    print('as mmengine counts), the selective scan from its formula. Each mixer\'s conv1d,')
    print('x_proj and dt_proj are counted in the mixer\'s row (it calls them by their')
    print('weights). Not counted, by mmengine\'s convention: elementwise ops, activations,')
    print('norms and pooling.')
    if any(type(m).__name__ == 'MultiScaleDeformableAttention' for m in model.modules()):
        print('Deformable attention (the adapter): its four linear layers are counted, its')
        print('bilinear sampling and weighted sum (grid_sample) are not.')
    print('=' * 60)


if __name__ == '__main__':
    main()
