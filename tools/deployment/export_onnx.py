"""Export a config's model to ONNX with dynamic height and width, and check it.

    python tools/deployment/export_onnx.py CONFIG CHECKPOINT [--out FILE] [--part backbone]
        [--shape H W] [--check-shape H W] [--static] [--opset 18]

``--part backbone`` (default) exports the backbone (its tuple of feature maps);
``--part model`` the whole network of the config as tools/analysis_tools run it: a
classifier's logits, a segmentor's decode-head logits (before resizing to the image), a
detector's backbone + neck features. The input is the preprocessed image ``(1, 3, H, W)``
(normalised as the config's data_preprocessor does); H and W are dynamic, multiples of the
patch size.

The scan is exported as an ONNX loop (``torch.onnx.export(dynamo=True)`` with the mixers'
scan backend ``'exportable'``: ``mmshufflemamba.models.use_scan_backend``); TorchScript-based
exporters cannot represent it and are refused. After writing the file, onnxruntime runs it
at ``--shape`` and at ``--check-shape`` (another size) and the largest difference from
PyTorch is printed; the tool exits non-zero when it exceeds ``--tolerance`` (relative to the
outputs' scale).

Not every head exports with dynamic sizes: mmseg's UPerHead pools to fixed grids
(adaptive average pooling), which the exporter bakes to the export size, so a whole
segmentor exported with dynamic sizes is only right at that size; the second check finds
this and the tool fails. Export such a model with ``--static`` (one size), or its backbone.

The file is written next to ``--out`` under a temporary name and moved into place only
after every check passed, so a failed export never replaces an earlier good one.

Needs onnx, onnxscript and onnxruntime, the tested versions of which are the ``export``
extra: ``pip install -e ".[export]"`` (or ``pip install -r requirements/export.txt``).
"""
import argparse
import importlib
import os
import os.path as osp
import sys
import tempfile

import numpy as np
import torch

from mmshufflemamba.models import use_scan_backend
from mmshufflemamba.utils import TensorForward, build_model_from_config


class BackboneForward(torch.nn.Module):
    def __init__(self, backbone: torch.nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, images: torch.Tensor):
        return tuple(self.backbone(images))


def flatten(outputs) -> list:
    if isinstance(outputs, torch.Tensor):
        return [outputs]
    return [t for out in outputs for t in flatten(out)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config')
    parser.add_argument('checkpoint')
    parser.add_argument('--out', help='ONNX file (default: next to the checkpoint)')
    parser.add_argument('--part', choices=['backbone', 'model'], default='backbone')
    parser.add_argument('--shape', type=int, nargs=2, metavar=('H', 'W'),
                        help='export and first check size (default: the backbone img_size)')
    parser.add_argument('--check-shape', type=int, nargs=2, metavar=('H', 'W'),
                        help='second check size (default: --shape + 3 patches in H, '
                        '5 in W)')
    parser.add_argument('--static', action='store_true',
                        help='a fixed input size (--shape) instead of dynamic H and W')
    parser.add_argument('--opset', type=int, default=18)
    parser.add_argument('--tolerance', type=float, default=1e-4,
                        help='largest allowed |onnxruntime - pytorch| / max |pytorch|')
    parser.add_argument('--cfg-options', nargs='+', default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    missing = [name for name in ('onnx', 'onnxscript', 'onnxruntime')
               if not _importable(name)]
    if missing:
        sys.exit(f'export_onnx.py needs {", ".join(missing)} (the exporter and the check): '
                 f'install the tested versions with pip install -e ".[export]" '
                 f'(or pip install -r requirements/export.txt).')
    from mmengine.runner import load_checkpoint

    model, _ = build_model_from_config(args.config)
    load_checkpoint(model, args.checkpoint, map_location='cpu', strict=True)
    model.eval()
    backbone = model.backbone
    unit = backbone.patch_size if backbone.patch_stride == backbone.patch_size else None
    if unit is None:
        raise SystemExit('--part export needs patch_stride == patch_size (dynamic sides are '
                         'multiples of the patch size)')
    shape = tuple(args.shape or backbone.img_size)
    check_size = tuple(args.check_shape or (shape[0] + 3 * unit, shape[1] + 5 * unit))
    network = BackboneForward(backbone) if args.part == 'backbone' else TensorForward(model)
    network.eval()  # the wrapper too: torch.onnx warns of training mode otherwise
    out = args.out or args.checkpoint.rsplit('.', 1)[0] + f'_{args.part}.onnx'

    Dim = torch.export.Dim
    dynamic = None if args.static else ({2: unit * Dim('h', min=1, max=4096 // unit),
                                         3: unit * Dim('w', min=1, max=4096 // unit)}, )
    example = torch.randn(1, 3, *shape, generator=torch.Generator().manual_seed(0))
    with use_scan_backend(network, 'exportable'), torch.no_grad():
        program = torch.onnx.export(network, (example, ), dynamo=True, opset_version=args.opset,
                                    dynamic_shapes=dynamic, verbose=False)
    out_dir = osp.dirname(osp.abspath(out))
    fd, staged = tempfile.mkstemp(suffix='.onnx.part', dir=out_dir)
    os.close(fd)
    try:
        program.save(staged)
        worst = check(staged, network, shape, None if args.static else check_size)
        if worst > args.tolerance:
            sys.exit(f'onnxruntime differs from PyTorch by {worst:.2e} of the outputs\' '
                     f'scale (tolerance {args.tolerance:.0e}): the exported model is wrong '
                     f'at some size, so it was not written ({out} is unchanged). If it is '
                     f'right at --shape only, a part of the model was exported for that '
                     f'size (e.g. adaptive pooling in a decode head): use --static, or '
                     f'--part backbone.')
        os.replace(staged, out)
    finally:
        if osp.exists(staged):
            os.remove(staged)
    sizes = f'fixed size {shape[0]}x{shape[1]}' if args.static else \
        f'dynamic H and W in multiples of {unit}'
    print(f'wrote {out} ({args.part}, opset {args.opset}, {sizes})')


def _importable(name: str) -> bool:
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


def check(path: str, network: torch.nn.Module, shape: tuple,
          check_size: tuple = None) -> float:
    """Run the ONNX file at ``shape`` (and ``check_size``) in onnxruntime against PyTorch;
    print each difference and return the worst one relative to the outputs' scale."""
    import onnxruntime
    session = onnxruntime.InferenceSession(path, providers=['CPUExecutionProvider'])
    worst = 0.0
    for size in (shape, ) if check_size is None else (shape, check_size):
        images = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            expected = [t.numpy() for t in flatten(network(images))]
        got = session.run(None, {session.get_inputs()[0].name: images.numpy()})
        diff = max(float(np.abs(g - e).max()) for g, e in zip(got, expected))
        scale = max(float(np.abs(e).max()) for e in expected)
        worst = max(worst, diff / max(scale, 1e-12))
        print(f'{size[0]}x{size[1]}: {len(got)} outputs, shapes '
              f'{[tuple(g.shape) for g in got]}, max |onnxruntime - pytorch| = {diff:.3e} '
              f'(outputs up to {scale:.3e})')
    return worst


if __name__ == '__main__':
    main()
